"""Column names of ``dec evaluate``'s report: ``--name`` when given, else names that stay distinct.

A checkpoint is named by its file stem and a timm name by itself; when two
stems collide (``runs/a/best.safetensors`` and ``runs/b/best.safetensors``) each
takes its parent folder in front (``a/best``, ``b/best``), which says which is
which; only names that still collide get ``#1``, ``#2``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from dec_cli.core.errors import UsageError


def _default(source: str, parents: int) -> str:
    path = Path(source)
    if not (path.suffix and path.exists()):
        return source
    parts = path.resolve().parts[-1 - parents:-1] if parents else ()
    return "/".join([*parts, path.stem])


def default_names(sources: Sequence[str]) -> list[str]:
    """Distinct names for ``sources``: file stems, with the parent folder where stems collide."""
    stems = [_default(s, 0) for s in sources]
    names = [_default(s, 1) if stems.count(stem) > 1 else stem for s, stem in zip(sources, stems)]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if names.count(name) == 1 else f"{name}#{seen[name]}")
    return out


def report_names(sources: Sequence[str], given: Optional[Sequence[str]]) -> list[str]:
    """``--name`` values for the first models (in order), default names for the rest; must be distinct."""
    given = list(given or [])
    if len(given) > len(sources):
        raise UsageError(f"{len(given)} --name value(s) but {len(sources)} MODEL(s)", "give at most one --name per MODEL")
    if any(not n.strip() for n in given):
        raise UsageError("--name needs a non-empty name", "for example --name baseline")
    names = given + default_names(sources)[len(given):]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise UsageError(f"model name {clash[0]!r} is used twice", "give each MODEL its own --name")
    return names
