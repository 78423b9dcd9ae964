"""Report files (``--json``, ``--markdown``, ``--plot``) never overwrite what their own command reads or writes.

A report path is checked before any work starts: it may not lie inside an input folder or an output
tree, be one of the command's input or output files, or carry the name of an output the command
writes under its output folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Collection, Iterable, Optional, Union

from dec_cli.core.errors import UsageError

PathLike = Union[str, os.PathLike]
Labelled = Iterable[tuple[str, Optional[PathLike]]]

_HINT = "write the report somewhere else"


def check_report_path(path: Optional[str], option: str, *, trees: Labelled = (), files: Labelled = (),
                      root: Optional[PathLike] = None, names: Collection[str] = ()) -> None:
    """`UsageError` (exit 2) if ``path`` would overwrite an input or output of the command.

    ``trees`` and ``files`` are (label, path) pairs, such as ``("SRC", src)``: folders the report may
    not lie in and files it may not be. ``names`` are the relative names the command writes under
    the folder ``root``. ``None`` and ``-`` (stdout) always pass, and pairs whose path is ``None`` are
    skipped.
    """
    if path is None or path == "-":
        return
    target = Path(path).resolve()
    for label, tree in trees:
        if tree is not None and (target == Path(tree).resolve() or Path(tree).resolve() in target.parents):
            raise UsageError(f"{option} {path} lies inside {label} {tree}", _HINT)
    for label, file in files:
        if file is not None and target == Path(file).resolve():
            raise UsageError(f"{option} {path} is {label} {file}", _HINT)
    if root is not None:
        base = Path(root).resolve()
        if base in target.parents and target.relative_to(base).as_posix() in names:
            raise UsageError(f"{option} {path} is one of the files this command writes in {root}", _HINT)
