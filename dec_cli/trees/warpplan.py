"""What a `dec warp` job will write, decided before any work: settings, outputs, warps and records.

`WarpSettings` holds everything that decides a job's outputs (and is checked
once, up front); `plan_warp` scans SRC (and ``--masks``), pairs each image with
its mask and lists every output it will get; `warp_for` and `manifest_record`
give an output's warp and its manifest line. Names follow `dec_cli.trees.treeformat`.
Nothing here prints; user errors raise `UsageError`.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from dec_cli.core.errors import UsageError
from dec_cli.trees.objects import OBJECT
from dec_cli.warps.randomwarp import check_grid_rows, image_key, keyed_warp
from dec_cli.warps.scalerange import DEFAULT_SCALE_RANGE, SCALE_LIMITS, ScaleRange
from dec_cli.trees.treeformat import IMAGE_EXTENSIONS, MASKS_DIR, is_image_path, mask_name, output_name, zoom_tag
from dec_cli.trees.treescan import TreeScan, walk_tree
from dec_cli.warps.warp import Warp
from dec_cli.warps.zoom import zoom_warp
from dec_cli.warps.zoomaxis import fit_radius

ZOOM_GRID, ZOOM_ROWS = 64, 17
MIN_RADIUS = 0.02  # a smaller zoom disc covers no pixel of most images


@dataclass(frozen=True)
class WarpSettings:
    """What decides every output of a warp job (recorded for --resume).

    ``center`` ``"object"`` centres each image's zoom on its object's box; ``radius`` None then covers it.
    """

    seed: int = 0
    scale_range: ScaleRange = DEFAULT_SCALE_RANGE
    grid: int = 8
    rows: int = 1
    copies: int = 1
    zooms: tuple[float, ...] | None = None
    center: tuple[float, float] | str | None = None
    radius: float | None = 0.25

    def __post_init__(self) -> None:
        # A plain (lo, hi) pair from Python goes through ScaleRange's one check (ValueError if out of bounds).
        object.__setattr__(self, "scale_range", ScaleRange.of(self.scale_range))

    def check(self) -> None:
        """Raise `UsageError` for settings that cannot make a valid warp (the scale range is valid already)."""
        try:
            check_grid_rows(self.grid, self.rows)
        except ValueError as exc:
            raise UsageError(str(exc), "for example --grid 8 --rows 2") from None
        if self.copies < 1:
            raise UsageError(f"--copies must be >= 1; got {self.copies}")
        if self.center == OBJECT and self.zooms is None:
            raise UsageError("--center object applies to --zoom sweeps only", "add --zoom Z1,Z2,...")
        if self.zooms is not None:
            lo, hi = SCALE_LIMITS
            if not self.zooms or any(not (math.isfinite(z) and lo <= z <= hi) for z in self.zooms):
                raise UsageError(f"--zoom factors must lie in [{lo:g}, {hi:g}]; got {','.join(map(str, self.zooms))}",
                                 "for example --zoom 0.8,1,1.25")
            _check_distinct_zooms(self.zooms)
            if self.radius is None and self.center == OBJECT:
                return  # each image's disc covers its object (objects.default_radius)
            if self.radius is None or not MIN_RADIUS <= self.radius <= 0.5:
                raise UsageError(f"--radius must lie in [{MIN_RADIUS:g}, 0.5]; got {self.radius}")
            cx, cy = (0.5, 0.5) if self.center in (None, OBJECT) else self.center
            if not (0 <= cx <= 1 and 0 <= cy <= 1):
                raise UsageError(f"--center must lie in [0, 1]^2; got {cx},{cy}", "for example --center 0.5,0.4")
            fitted = fit_radius(self.zooms, (cx, cy), self.radius, (1, 1))
            if fitted < self.radius * (1 - 1e-6):
                # Outside the disc the warp compensates on each side; `dec unwarp` accepts factors
                # within SCALE_LIMITS only. A square image is the tightest case (the short axis).
                lo, hi = SCALE_LIMITS
                raise UsageError(f"zoom {','.join(format(z, 'g') for z in self.zooms)} with radius {self.radius:g} about "
                                 f"{cx:g},{cy:g} makes local scale factors outside [{lo:g}, {hi:g}] beside the disc",
                                 f"use --radius {math.floor(fitted * 1000) / 1000:g} or less, a milder factor, "
                                 "or a centre further from the border")


def _check_distinct_zooms(zooms: Sequence[float]) -> None:
    """Two factors that name the same output (``1,1`` or ``1,1.0000001``) would write one file twice."""
    seen: dict[str, float] = {}
    for z in zooms:
        name = zoom_tag(z)
        if name in seen:
            raise UsageError(f"--zoom factors {seen[name]:.10g} and {z:.10g} both name outputs *.z{name}.*",
                             "give each factor once (names keep 6 significant digits)")
        seen[name] = z


def size_problem(settings: WarpSettings, width: int, height: int) -> str | None:
    """Why random warps of ``settings`` do not fit an image of this size (None when they do)."""
    if settings.zooms is None and max(settings.grid, settings.rows) > min(width, height):
        return (f"{width}x{height} pixels is too small for --grid {settings.grid} --rows {settings.rows} "
                "(at least one pixel per interval and row)")
    return None


@dataclass(frozen=True)
class Output:
    """One output of a source file: its relative name and which warp makes it."""

    dst: str
    kind: str
    copy: int | None
    zoom: float | None


Plan = list[tuple[str, list[Output], "str | None"]]  # (relative path, its outputs, its mask) per source image


def plan_outputs(rel: str, settings: WarpSettings) -> list[Output]:
    """The outputs of one source file, in manifest order."""
    if settings.zooms is not None:
        return [Output(output_name(rel, zoom=z), "zoom", None, float(z)) for z in settings.zooms]
    if settings.copies == 1:
        return [Output(rel, "random", None, None)]
    return [Output(output_name(rel, copy=i), "random", i, None) for i in range(settings.copies)]


def warp_for(settings: WarpSettings, rel: str, out: Output, size_hw: Sequence[int]) -> Warp:
    """The warp of one output. Random warps depend only on seed, relative path and copy index."""
    if out.kind == "zoom":
        return zoom_warp(out.zoom, center=settings.center or (0.5, 0.5), radius=settings.radius,
                         size=tuple(size_hw), grid=ZOOM_GRID, rows=ZOOM_ROWS)
    return keyed_warp(settings.seed, image_key(rel, copy=out.copy or 0), grid=settings.grid, rows=settings.rows,
                      scale_range=settings.scale_range)


def manifest_record(settings: WarpSettings, rel: str, out: Output, warp: Warp,
                    mask: str | None = None) -> dict[str, Any]:
    """One manifest line: enough to invert the warp and to check its slopes."""
    zoom = out.kind == "zoom"
    record = {
        "src": rel, "dst": out.dst, "seed": settings.seed, "kind": out.kind,
        "zoom": out.zoom, "copy": out.copy,
        "scale_range": None if zoom else list(settings.scale_range),
        "grid": warp.knots_x.shape[-1] - 1, "rows": warp.rows,
        "knots_x": warp.knots_x[0].tolist(), "knots_y": warp.knots_y[0].tolist(),
    }
    if zoom:
        record["center"] = list(settings.center or (0.5, 0.5))
        record["radius"] = settings.radius
    if mask is not None:
        record["mask"] = mask
    return record


def scan_images(root: Path, *, exclude: Path | None = None) -> TreeScan:
    """Files with image extensions under ``root`` (see `walk_tree`: FIFOs, unreadable folders
    and link loops come back as bad entries); a ``root`` that cannot be listed is a `UsageError`."""
    try:
        return walk_tree(root, is_image_path, exclude=exclude)
    except OSError as exc:
        raise UsageError(f"cannot read folder {root}: {exc.strerror or exc}", "check its permissions") from None


def check_tree_paths(src: Path, dst: Path, what: str = "SRC") -> None:
    """SRC must be an existing folder; DST must not be SRC, lie inside it or hold it, and must be writable."""
    if not src.exists():
        raise UsageError(f"{what} {src} does not exist", "give a folder of images")
    if not src.is_dir():
        raise UsageError(f"{what} {src} is not a folder", "give a folder of images")
    s, d = src.resolve(), dst.resolve()
    if d == s or s in d.parents or d in s.parents:
        relation = "the same as" if d == s else "inside" if s in d.parents else "a parent folder of"
        raise UsageError(f"DST {dst} is {relation} {what} {src}",
                         "choose an output folder that neither holds nor lies inside the input tree")
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".dec-write-test.", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"cannot write to DST {dst}: {exc.strerror or exc}",
                         "check the path and its permissions") from None


def plan_warp(src: str | os.PathLike, dst: str | os.PathLike, settings: WarpSettings, *,
              masks: str | os.PathLike | None = None, boxes: str | os.PathLike | None = None
              ) -> tuple[Plan, list[dict[str, str]]]:
    """Check paths and settings; list (relative path, outputs, mask) per source image, and the bad
    entries of the scans (FIFOs, unreadable folders, link loops)."""
    src, dst = Path(src), Path(dst)
    settings.check()
    if settings.center == OBJECT and masks is None and boxes is None:
        raise UsageError("--center object needs the objects: --masks DIR or --boxes FILE",
                         "give masks named like the images, or a JSON/COCO file of boxes")
    if boxes is not None and settings.center != OBJECT:
        raise UsageError("--boxes applies to --center object only", "add --zoom Z1,Z2,... --center object")
    check_tree_paths(src, dst)
    scan = scan_images(src)
    if not scan.files and not scan.bad:
        raise UsageError(f"SRC {src} holds no image files",
                         f"image extensions: {' '.join(sorted(IMAGE_EXTENSIONS))}")
    bad = list(scan.bad)
    mask_of: dict[str, str] = {}
    if masks is not None:
        masks = Path(masks)
        if not masks.is_dir():
            raise UsageError(f"--masks {masks} is not a folder", "give a folder of masks named like the images")
        check_tree_paths(masks, dst, "--masks")
        mask_scan = scan_images(masks)
        bad += [{"path": f"{MASKS_DIR}/{b['path']}", "reason": b["reason"]} for b in mask_scan.bad]
        mask_of = match_masks(scan.files, mask_scan.files)
        if scan.files and not mask_of:  # silently warping without masks is not what --masks asked for
            raise UsageError(f"--masks {masks} holds no mask named like an image of SRC "
                             f"({len(mask_scan.files)} mask file(s) there)",
                             "name each mask like its image (same relative path, any image extension)")
    plan = [(rel, plan_outputs(rel, settings), mask_of.get(rel)) for rel in scan.files]
    check_mask_outputs(plan)
    return plan, bad


def match_masks(rels: Sequence[str], mask_files: Sequence[str]) -> dict[str, str]:
    """The mask of each image: the mask file with the same relative name apart from the extension.

    Two masks for one image are ambiguous: `UsageError` naming them.
    """
    by_name: dict[str, list[str]] = {}
    for m in mask_files:
        by_name.setdefault(str(PurePosixPath(m).with_suffix("")), []).append(m)
    found = {rel: by_name.get(str(PurePosixPath(rel).with_suffix("")), []) for rel in rels}
    for rel, candidates in found.items():
        if len(candidates) > 1:
            raise UsageError(f"--masks: {len(candidates)} masks match {rel} ({', '.join(candidates)})",
                             "keep one mask per image")
    return {rel: candidates[0] for rel, candidates in found.items() if candidates}


def check_mask_outputs(plan: Plan) -> None:
    """Two images never share one warped mask (``a.png`` and ``a.jpg`` both matching ``masks/a.png``):
    `UsageError` listing the clashes."""
    owner: dict[str, str] = {}
    clashes: dict[str, set[str]] = {}
    for rel, outs, mask_rel in plan:
        if mask_rel is None:
            continue
        for out in outs:
            name = mask_name(out.dst, mask_rel)
            if owner.setdefault(name, rel) != rel:
                clashes.setdefault(mask_rel, {owner[name]}).add(rel)
    if clashes:
        listed = "; ".join(f"{MASKS_DIR}/{m} matches {' and '.join(sorted(r))}" for m, r in sorted(clashes.items())[:3])
        if len(clashes) > 3:
            listed += f"; and {len(clashes) - 3} more"
        raise UsageError(f"--masks: images would share one warped mask: {listed}",
                         "give each image its own mask name (images that differ only in extension cannot share one)")
