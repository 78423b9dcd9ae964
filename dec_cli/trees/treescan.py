"""Walking an input tree safely: only regular files are read, nothing vanishes without a word.

Opening a FIFO blocks forever and a socket or device is no image, so `dec` reads
regular files (and symbolic links to them) only; anything else with an image
name, a dangling link, a folder that cannot be listed and a folder link that
loops back to an enclosing folder are reported as bad entries, never dropped.
Symbolic links to folders are followed otherwise. Hidden names are skipped.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotRegularFileError(OSError):
    """A path that must be read as a file is something else (FIFO, socket, device, folder)."""


@dataclass
class TreeScan:
    """What a walk found: files to read, other file names, and bad entries with their reasons."""

    files: list[str] = field(default_factory=list)  # relative posix paths the caller asked for
    others: list[str] = field(default_factory=list)  # relative posix paths of the other names
    bad: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}


def check_regular_file(path: str | os.PathLike) -> None:
    """Raise `OSError` unless ``path`` is a regular file or a link to one; never opens it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise NotRegularFileError("dangling symbolic link") from None
        raise
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a plain file")
        raise NotRegularFileError(f"not a regular file ({kind})")


def _reason(exc: OSError) -> str:
    return str(exc) if isinstance(exc, NotRegularFileError) else f"cannot read: {exc.strerror or exc}"


def _subfolder_key(path: Path, here: Path, ancestors: frozenset[tuple[int, int]]) -> tuple[int, int] | str:
    """The (device, inode) of a subfolder of ``here`` to enter, or why it is not entered (a bad entry's reason)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return _reason(exc)
    key, real = (st.st_dev, st.st_ino), path.resolve()
    if key in ancestors or real == here or real in here.parents:
        return "symbolic link loop: leads back to an enclosing folder, not followed"
    return key


def walk_tree(root: str | os.PathLike, wanted: Callable[[str], bool], *,
              exclude: Path | None = None) -> TreeScan:
    """Walk ``root`` and sort what is there. Symbolic links to folders are followed, except those
    that lead to the folder itself or one above it (on the real path or the walk): loops are reported.

    ``wanted(name)`` picks the files to read; each of them must be a regular file
    (or a link to one) or it is a bad entry. ``exclude`` is a resolved folder not
    to enter. Paths are relative to ``root``, posix, sorted. A ``root`` that cannot
    be listed raises its `OSError`.
    """
    root = Path(root)
    scan = TreeScan()
    top = os.stat(root)
    stack: list[tuple[Path, frozenset[tuple[int, int]]]] = [(root, frozenset({(top.st_dev, top.st_ino)}))]

    def rel(path: Path) -> str:
        return path.relative_to(root).as_posix()

    while stack:
        folder, ancestors = stack.pop()
        here = folder.resolve()
        try:
            with os.scandir(folder) as it:
                entries = [e for e in it if not e.name.startswith(".")]
        except OSError as exc:
            if folder == root:
                raise
            scan.bad.append({"path": rel(folder) + "/", "reason": f"cannot read folder: {exc.strerror or exc}"})
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if exclude is not None and path.resolve() == exclude:
                    continue
                key = _subfolder_key(path, here, ancestors)
                if isinstance(key, str):
                    scan.bad.append({"path": rel(path) + "/", "reason": key})
                else:
                    stack.append((path, ancestors | {key}))
            elif not wanted(entry.name):
                scan.others.append(rel(path))
            else:
                try:
                    check_regular_file(path)
                except OSError as exc:
                    scan.bad.append({"path": rel(path), "reason": _reason(exc)})
                    continue
                scan.files.append(rel(path))
    scan.files.sort()
    scan.others.sort()
    scan.bad.sort(key=lambda b: b["path"])
    return scan
