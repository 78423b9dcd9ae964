"""Atomic file output: write to a temporary name beside the target, then rename.

Every command writes through these helpers so an interrupt or a full disk never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any, BinaryIO, Iterator

_TEMP_COUNTER = itertools.count()


def _create_temp(target: Path) -> tuple[int, Path]:
    """Create a new empty file beside ``target``; returns its descriptor and path.

    The name carries the process id and a counter (cheap, and unique among
    concurrent workers); O_EXCL guards against a leftover of a killed run.
    Mode 0o666 lets the kernel apply the umask, as a plain ``open()`` would.
    """
    while True:
        tmp = target.with_name(f".{target.name}.{os.getpid()}-{next(_TEMP_COUNTER)}.part{target.suffix}")
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def _prepare(target: str | os.PathLike, overwrite: bool) -> Path:
    """The target as a Path, its folder made; refuses an existing target unless ``overwrite``."""
    target = Path(target)
    if not target.parent.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and target.exists():
        raise FileExistsError(target)
    return target


def _commit_or_remove(tmp: Path, target: Path, ok: bool) -> None:
    """Rename the finished temporary file onto the target; otherwise (or if renaming fails) remove it."""
    try:
        if ok:
            os.replace(tmp, target)
            return
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success.

    On any exception (KeyboardInterrupt included) the temporary file is removed
    and ``target`` is left as it was.
    """
    target = _prepare(target, overwrite)
    fd, tmp = _create_temp(target)
    os.close(fd)
    ok = False
    try:
        yield tmp
        ok = True
    finally:
        _commit_or_remove(tmp, target, ok)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, *, overwrite: bool = True) -> Iterator[BinaryIO]:
    """Like `atomic_path`, but yield the temporary file opened for binary writing (and reading,
    which multi-page TIFF writers need).

    Saves reopening the file, which counts when thousands of small images are written.
    """
    target = _prepare(target, overwrite)
    fd, tmp = _create_temp(target)
    ok = False
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
        ok = True
    finally:
        _commit_or_remove(tmp, target, ok)


# ".<name>.<tag>.part[.<ext>]", nested when an atomic write wraps another one.
_TEMPORARY_NAME = re.compile(r"^\..+\.[A-Za-z0-9_-]+\.part(\.[^.]*)?$")


def remove_stale_temporaries(folder: str | os.PathLike, *, recursive: bool = False) -> list[str]:
    """Delete the temporary files that writers killed without cleanup (SIGKILL, power loss) left.

    Call it only where no writer is running (before resuming a job). Returns the
    removed paths relative to ``folder``.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for path in sorted(root.rglob(".*") if recursive else root.glob(".*")):
        if path.is_file() and _TEMPORARY_NAME.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path.relative_to(root).as_posix())
    return removed


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_text(data: Any) -> str:
    """Stable, indented JSON text (tensors and paths converted)."""
    return json.dumps(data, indent=2, default=_json_default) + "\n"


def write_json(data: Any, destination: str | os.PathLike) -> None:
    """Write JSON to a file atomically."""
    write_text_atomic(destination, json_text(data))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
