"""Command help that survives click's re-wrapping: example command lines are kept whole.

Click re-flows every paragraph of a docstring to the terminal width, which
breaks an ``Example: dec ...`` line in the middle of the command, so a reader
cannot copy it. A paragraph that starts with a ``\\b`` line is printed as
written; `keep_examples` marks every paragraph holding a ``dec`` command so.
"""

from __future__ import annotations

import re
from typing import Any

_EXAMPLE = re.compile(r"^[^\n]*:\s+dec\s", re.MULTILINE)


def keep_examples(doc: str) -> str:
    """``doc`` with each paragraph that shows a ``dec ...`` command line marked as not to be re-wrapped."""
    def mark(p: str) -> str:
        indent = p[:len(p) - len(p.lstrip(" "))].rpartition("\n")[2]  # keep the docstring's indentation
        return f"{indent}\b\n{p}" if _EXAMPLE.search(p) and not p.lstrip().startswith("\b") else p

    return "\n\n".join(mark(p) for p in doc.split("\n\n"))


def keep_app_examples(app: Any) -> None:
    """Apply `keep_examples` to the docstring of every command registered on a Typer ``app``."""
    for info in app.registered_commands:
        if info.callback is not None and info.callback.__doc__:
            info.callback.__doc__ = keep_examples(info.callback.__doc__)
