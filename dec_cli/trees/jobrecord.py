"""Which files in an output folder a `dec` tree job wrote: the only ones `--overwrite` and `--resume` touch.

A warp job lists its planned outputs in its job file before it starts and every output (masks
included) in the manifest when it ends; an unwarp job lists its outputs in its own job file.
Any other file found under an output's name belongs to someone else: it is never replaced, and
never taken for a finished output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from dec_cli.core.errors import UsageError


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def recorded_outputs(dst: Path, manifests: Iterable[str], job_files: Iterable[str]) -> set[str]:
    """Relative names that the manifests (``dst``, ``mask``) and job files (``outputs``) in ``dst`` record.

    Unreadable files and malformed lines record nothing.
    """
    names: set[str] = set()
    for name in manifests:
        try:
            lines = (dst / name).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for record in map(_json, lines):
            if isinstance(record, dict):
                names.update(v for v in (record.get("dst"), record.get("mask")) if isinstance(v, str))
    for name in job_files:
        try:
            job = _json((dst / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
        if isinstance(job, dict) and isinstance(job.get("outputs"), list):
            names.update(v for v in job["outputs"] if isinstance(v, str))
    return names


def check_own_outputs(dst: Path, existing: Sequence[str], recorded: set[str]) -> None:
    """`UsageError` (exit 2) if any existing file at an output name is not a recorded output of a dec job."""
    foreign = [name for name in existing if name not in recorded]
    if foreign:
        raise UsageError(f"DST {dst} holds {len(foreign)} file(s) under this job's output names that no dec job "
                         f"wrote there (first: {foreign[0]!r})",
                         "choose a new or empty DST: --overwrite and --resume touch only a dec job's own outputs")
