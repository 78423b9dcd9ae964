"""The on-disk format of a warp tree: its names, its manifest, and how a manifest is judged.

A tree written by `dec warp` (or `dec digits`) holds images with the source's
relative names (copies ``name.w{i}.ext``, zoom outputs ``name.z{z}.ext``), warped
masks under ``masks/``, and ``manifest.jsonl``: one JSON object per output, with
``src``, ``dst``, ``kind``, the zoom and the warp's knots. `dec unwarp` and
`dec evaluate` read it back. A manifest may come from anywhere (a download,
a hand edit), so nothing in it is trusted. The rule, the same for every reader:

- A manifest that cannot be read at all (missing, not a regular file, an OS
  error) or that holds no valid record raises `UsageError` (exit code 2).
- Otherwise every line is judged on its own. A line that is not UTF-8, not
  JSON or not an object, and a record that fails a check below, becomes a
  `BadRecord` (line number and reason); the valid records are kept.
- Paths (``src``, ``dst``, ``mask``) must be relative, without ``..``, and,
  for every root the caller names, resolve (symlinks followed) inside it.
- Warps (when the caller needs them): ``grid`` and ``rows`` positive integers,
  ``knots_x`` and ``knots_y`` each ``rows`` lists of ``grid + 1`` finite
  numbers from 0 to 1, strictly increasing, every local scale factor within
  `SCALE_LIMITS`, and no fold (positive Jacobian determinant).
- Zoom records: a finite positive ``zoom``; ``center`` in [0, 1]^2 and
  ``radius`` in (0, 0.5] when given.

What a bad record means is the caller's: `dec unwarp` lists it and restores
the rest (exit 1, 0 with ``--skip-bad``); `dec evaluate` refuses a tree whose
manifest has one, as its zoom groups would be wrong.
"""

from __future__ import annotations

import functools
import json
import math
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

from dec_cli.core.errors import UsageError
from dec_cli.core.files import write_text_atomic
from dec_cli.warps.scalerange import SCALE_LIMITS
from dec_cli.warps.warp import Warp, jacobian_determinant

MANIFEST_NAME = "manifest.jsonl"
MASKS_DIR = "masks"  # `dec warp --masks` writes the warped masks here, under DST
IMAGE_EXTENSIONS = frozenset({
    ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
})
KINDS = ("random", "zoom")
_KNOT_TOL = 1e-5  # knots are stored from float32
_SLOPE_TOL = 1e-3  # relative slack on SCALE_LIMITS for the same rounding
_FOLD_GRID = 32  # points per axis where the Jacobian determinant is checked (a few ms per warp)
_SHOWN = 80  # characters of a bad value quoted in a reason


# --------------------------------------------------------------------------- names


def is_image_path(path: str | os.PathLike) -> bool:
    """True for file names with an image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def zoom_tag(factor: float) -> str:
    """How a zoom factor appears in a file name (6 significant digits: ``1.25``, ``0.8``)."""
    return format(factor, "g")


def output_name(rel: str, *, copy: int | None = None, zoom: float | None = None) -> str:
    """``name.z{z}.ext`` for a zoom factor, ``name.w{i}.ext`` for copy ``i``, else ``rel`` itself."""
    path = PurePosixPath(rel)
    if zoom is not None:
        return str(path.with_name(f"{path.stem}.z{zoom_tag(zoom)}{path.suffix}"))
    if copy is not None:
        return str(path.with_name(f"{path.stem}.w{copy}{path.suffix}"))
    return rel


def zoom_source_name(rel: str) -> str:
    """``cls/cat.z1.2.png`` -> ``cls/cat.png``: the source of a zoom output (when a record has no ``src``)."""
    return re.sub(r"\.z[0-9.eE+-]+(\.[^./]+)$", r"\1", rel)


def mask_name(dst: str, mask_rel: str | None) -> str | None:
    """The name under DST of output ``dst``'s warped mask: ``masks/`` + ``dst`` with the mask's extension."""
    if mask_rel is None:
        return None
    return str(PurePosixPath(MASKS_DIR) / PurePosixPath(dst).with_suffix(PurePosixPath(mask_rel).suffix))


# --------------------------------------------------------------------------- writing


def write_manifest(path: str | os.PathLike, records: Iterable[dict[str, Any]], *, compact: bool = True) -> None:
    """Write ``records`` as ``manifest.jsonl`` atomically, one JSON object per line.

    `dec warp` writes compact lines (knots make them long); `dec digits` keeps
    ``compact=False``, the spaced separators its trees have always had, so its
    builds stay byte-identical.
    """
    separators = (",", ":") if compact else None
    write_text_atomic(path, "".join(json.dumps(r, separators=separators) + "\n" for r in records))


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class BadRecord:
    """A manifest line that is not a valid record, and why."""

    line: int
    reason: str

    def entry(self, path: Path) -> dict[str, str]:
        """The bad-file list entry (``path``, ``reason``) of a tree job."""
        return {"path": f"{path}:{self.line}", "reason": self.reason}


@dataclass
class Manifest:
    """The valid records of a manifest file, in file order, and its bad lines."""

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)


def read_manifest(path: str | os.PathLike, *, roots: Sequence[str | os.PathLike] = (),
                  warps: bool = False) -> Manifest:
    """Read and judge ``path`` (see the module docstring for the rule).

    ``roots``: folders that every ``dst`` must resolve inside (the first also
    holds ``mask``). ``warps``: every record must carry a valid warp.
    """
    path = Path(path)
    hint = "pass --manifest DST/manifest.jsonl of a `dec warp` run"
    if not path.exists():
        raise UsageError(f"manifest {path} does not exist", hint)
    if not path.is_file():
        raise UsageError(f"manifest {path} is not a regular file", hint)
    resolved = [Path(os.path.realpath(r)) for r in roots]
    found = Manifest(path)
    seen: dict[str, int] = {}
    try:
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                record, reason = _parse_line(raw)
                if record is None and reason is None:
                    continue  # a blank line
                if reason is None:
                    reason = check_record(record, roots=resolved, warps=warps)
                if reason is None:
                    key = posixpath.normpath(record["dst"])
                    if key in seen:
                        reason = f"dst {_show(record['dst'])} is also on line {seen[key]}"
                    else:
                        seen[key] = number
                if reason is None:
                    found.records.append(record)
                else:
                    found.bad.append(BadRecord(number, reason))
    except OSError as exc:
        raise UsageError(f"cannot read manifest {path}: {exc.strerror or exc}", "check the file and its permissions") \
            from None
    if not found.records:
        first = f" (line {found.bad[0].line}: {found.bad[0].reason})" if found.bad else ""
        raise UsageError(f"manifest {path} holds no valid record{first}",
                         "run `dec warp` again to write a fresh manifest")
    return found


def read_tree_manifest(root: str | os.PathLike) -> Optional[list[dict[str, Any]]]:
    """The records of ``root/manifest.jsonl`` (None without one) for a reader that needs them all:
    any bad record is a `UsageError`, naming its line."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    found = read_manifest(path)
    if found.bad:
        first = found.bad[0]
        raise UsageError(f"{path}:{first.line}: {first.reason} ({len(found.bad)} bad record(s))",
                         "fix or delete those lines, or regenerate the tree with 'dec warp --zoom'")
    return found.records


def _parse_line(raw: bytes) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """(record, None), (None, reason), or (None, None) for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    if not text.strip():
        return None, None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg})"
    except (ValueError, RecursionError):
        return None, "not JSON (a value this reader cannot hold)"
    if not isinstance(record, dict):
        return None, f"not a JSON object but {type(record).__name__}"
    return record, None


def check_record(record: dict[str, Any], *, roots: Sequence[Path] = (), warps: bool = False) -> Optional[str]:
    """Why ``record`` is not valid (None when it is); ``roots`` must be resolved already."""
    reason = _check_path(record, "dst", roots, required=True)
    reason = reason or _check_path(record, "src", (), required=False)
    reason = reason or _check_path(record, "mask", roots[:1], required=False)
    reason = reason or _check_kind(record)
    if reason is None and warps:
        reason = check_warp(record)
    return reason


def _show(value: Any) -> str:
    """A value quoted for a reason: JSON escapes keep control characters off the terminal."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _check_path(record: dict[str, Any], key: str, roots: Sequence[Path], *, required: bool) -> Optional[str]:
    value = record.get(key)
    if value is None:
        return f"no '{key}' path" if required else None
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        return f"'{key}' is not a path: {_show(value)}"
    parts = PurePosixPath(value).parts
    if value.startswith("/") or ".." in parts or posixpath.normpath(value) in (".", ""):
        return f"'{key}' {_show(value)} is not a relative path inside the tree"
    for root in roots:
        target = Path(os.path.realpath(root / value))
        if root not in target.parents:
            return f"'{key}' {_show(value)} leads outside {root} (through a link)"
    return None


def _number(value: Any) -> bool:
    """A finite JSON number (not a bool; an integer too large for a float is not finite)."""
    if type(value) not in (int, float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _check_kind(record: dict[str, Any]) -> Optional[str]:
    kind = record.get("kind")
    if kind not in KINDS:
        return f"'kind' must be one of {', '.join(KINDS)}; got {_show(kind)}"
    if kind != "zoom":
        return None
    zoom, center, radius = record.get("zoom"), record.get("center"), record.get("radius")
    if not (_number(zoom) and zoom > 0):
        return f"'zoom' must be a positive number; got {_show(zoom)}"
    if center is not None and not (isinstance(center, list) and len(center) == 2
                                   and all(_number(c) and 0 <= c <= 1 for c in center)):
        return f"'center' must be two numbers in [0, 1]; got {_show(center)}"
    if radius is not None and not (_number(radius) and 0 < radius <= 0.5):
        return f"'radius' must be in (0, 0.5]; got {_show(radius)}"
    return None


def check_warp(record: dict[str, Any]) -> Optional[str]:
    """Why the record's knots do not make a valid warp (None when they do)."""
    kx, ky = record.get("knots_x"), record.get("knots_y")
    if kx is None or ky is None:
        return "the manifest records no single warp for it (knots are null)"
    grid, rows = record.get("grid"), record.get("rows")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (grid, rows)):
        return f"'grid' and 'rows' must be positive integers; got {_show(grid)} and {_show(rows)}"
    for key, knots in (("knots_x", kx), ("knots_y", ky)):
        shaped = (isinstance(knots, list) and len(knots) == rows
                  and all(isinstance(r, list) and len(r) == grid + 1 for r in knots))
        if not shaped:
            return f"'{key}' must be {rows} row(s) of {grid + 1} knots (rows x (grid + 1))"
        # JSON gives int, float, str, bool, None, list or dict; bool is not an int here.
        try:
            numbers = all(type(v) in (int, float) for r in knots for v in r)
            k = np.asarray(knots, dtype=np.float64) if numbers else None
        except OverflowError:  # an integer beyond float range
            k = None
        if k is None or not np.isfinite(k).all():
            return f"'{key}' holds a value that is not a finite number"
        if np.abs(k[:, 0]).max() > _KNOT_TOL or np.abs(k[:, -1] - 1).max() > _KNOT_TOL:
            return f"'{key}' rows must start at 0 and end at 1"
        slopes = np.diff(k, axis=1) * grid
        if slopes.min() <= 0:
            return f"'{key}' is not strictly increasing"
        lo, hi = SCALE_LIMITS
        if slopes.min() < lo * (1 - _SLOPE_TOL) or slopes.max() > hi * (1 + _SLOPE_TOL):
            return (f"'{key}' has local scale factors {slopes.min():.3g} to {slopes.max():.3g}, "
                    f"outside [{lo:g}, {hi:g}]")
    if rows > 1:
        det = _min_determinant(tuple(map(tuple, kx)), tuple(map(tuple, ky)))
        if det <= 0:
            return f"the warp folds (Jacobian determinant {det:.3g})"
    return None


@functools.lru_cache(maxsize=256)
def _min_determinant(knots_x: tuple, knots_y: tuple) -> float:
    """The smallest Jacobian determinant of a warp; cached, as a zoom sweep repeats its knots per image size."""
    warp = Warp.from_knots(torch.tensor(knots_x, dtype=torch.float64), torch.tensor(knots_y, dtype=torch.float64))
    return float(jacobian_determinant(warp, n=_FOLD_GRID).min())
