"""The tree jobs behind `dec warp` and `dec unwarp`.

`run_warp` walks SRC, warps every image with a warp that depends only on the
seed, the file's relative path and the copy index, writes the same relative
tree under DST (atomic writes, nothing overwritten without ``overwrite``) and
finishes with ``DST/manifest.jsonl``. Work is split per file, so results are
byte-identical whatever the number of worker processes and an interrupted job
resumes by skipping the outputs already in place. `run_unwarp` inverts every
warp a manifest records (`dec_cli.manifest` judges each record first).
Nothing here prints; user errors raise `UsageError`.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Sequence

import torch

from dec_cli import images
from dec_cli.errors import DecError, UsageError
from dec_cli.files import remove_stale_temporaries, write_json, write_text_atomic
from dec_cli.joblock import LOCK_FILE, job_lock
from dec_cli.jobrecord import check_own_outputs, recorded_outputs
from dec_cli.manifest import MANIFEST_NAME, Manifest, read_manifest
from dec_cli.objects import OBJECT, Box, ObjectError, load_boxes, mask_box, object_disc
from dec_cli.reportpath import check_report_path
from dec_cli.treescan import TreeScan, walk_tree
from dec_cli.warp import (DEFAULT_SCALE_RANGE, SCALE_LIMITS, Warp, apply_warp, check_grid_rows, check_scale_range,
                          keyed_warp, zoom_warp)

JOB_FILE = ".dec-warp-job.json"
UNWARP_JOB_FILE = ".dec-unwarp-job.json"
MASKS_DIR = "masks"
ZOOM_GRID, ZOOM_ROWS = 64, 17
MIN_RADIUS = 0.02  # a smaller zoom disc covers no pixel of most images
# Unwarping resamples a second time; bicubic keeps more of the detail the first pass kept.
UNWARP_SAMPLING = "bicubic"


@dataclass(frozen=True)
class WarpSettings:
    """What decides every output of a warp job (recorded for --resume).

    ``center`` ``"object"`` centres each image's zoom on its object's box; ``radius`` None then covers it.
    """

    seed: int = 0
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE
    grid: int = 8
    rows: int = 1
    copies: int = 1
    zooms: tuple[float, ...] | None = None
    center: tuple[float, float] | str | None = None
    radius: float | None = 0.25

    def check(self) -> None:
        """Raise `UsageError` for settings that cannot make a valid warp."""
        try:
            check_scale_range(self.scale_range)
        except ValueError as exc:
            raise UsageError(str(exc), "for example --scale-range 0.75,1.33") from None
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
            if 2 * self.radius * max(self.zooms) >= 1:
                raise UsageError(f"zoom {max(self.zooms)} with radius {self.radius} leaves no room outside the disc",
                                 "use a smaller --radius or factor")
            # Outside the disc the warp compensates; `dec unwarp` accepts factors within SCALE_LIMITS only.
            lo, hi = SCALE_LIMITS
            for z in self.zooms:
                outside = (1 - 2 * self.radius * z) / (1 - 2 * self.radius) if self.radius < 0.5 else math.inf
                if not (lo <= z <= hi and lo <= outside <= hi):
                    raise UsageError(f"zoom {z:g} with radius {self.radius:g} makes local scale factors outside "
                                     f"[{lo:g}, {hi:g}]", "use a smaller --radius or a milder factor")


def _check_distinct_zooms(zooms: Sequence[float]) -> None:
    """Two factors that name the same output (``1,1`` or ``1,1.0000001``) would write one file twice."""
    seen: dict[str, float] = {}
    for z in zooms:
        name = format(z, "g")
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


@dataclass
class JobSummary:
    """What a tree job did (the `--json` summary)."""

    command: str
    src: str
    dst: str
    files: int = 0
    outputs: int = 0
    written: int = 0
    skipped_existing: int = 0
    masks: int = 0
    bad: list[dict[str, str]] = field(default_factory=list)
    manifest: str | None = None
    workers: int = 1
    seconds: float = 0.0

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["files_per_s"] = round(self.files_per_s, 3)
        data["seconds"] = round(self.seconds, 3)
        return data


def _read_failure(exc: Exception) -> str:
    """The reason a source file could not be read, for the bad-file list."""
    if isinstance(exc, images.ImageReadError):
        return str(exc)
    return f"cannot read: {getattr(exc, 'strerror', None) or exc}"


# --------------------------------------------------------------------------- naming and planning


def output_name(rel: str, *, copy: int | None = None, zoom: float | None = None) -> str:
    """``name.w{i}.ext`` for copies, ``name.z{z}.ext`` for zoom factors, else ``rel`` itself."""
    path = PurePosixPath(rel)
    if zoom is not None:
        return str(path.with_name(f"{path.stem}.z{format(zoom, 'g')}{path.suffix}"))
    if copy is not None:
        return str(path.with_name(f"{path.stem}.w{copy}{path.suffix}"))
    return rel


def mask_output(out: Output, mask_rel: str | None) -> str | None:
    """The name under DST of an output's warped mask (None without a mask)."""
    if mask_rel is None:
        return None
    return str(PurePosixPath(MASKS_DIR) / PurePosixPath(out.dst).with_suffix(PurePosixPath(mask_rel).suffix))


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
    return keyed_warp(settings.seed, f"{rel}\0copy={out.copy or 0}", grid=settings.grid, rows=settings.rows,
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


# --------------------------------------------------------------------------- checks


def scan_images(root: Path, *, exclude: Path | None = None) -> TreeScan:
    """Files with image extensions under ``root`` (see `walk_tree`: FIFOs, unreadable folders
    and link loops come back as bad entries); a ``root`` that cannot be listed is a `UsageError`."""
    try:
        return walk_tree(root, images.is_image_path, exclude=exclude)
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


# --------------------------------------------------------------------------- workers


@dataclass(frozen=True)
class _Context:
    src: str
    dst: str
    masks: str | None
    settings: WarpSettings
    overwrite: bool
    resume: bool
    boxes: dict[str, Box] | None = None


def _object_settings(ctx: _Context, rel: str, size: tuple[int, int], mask_pic: images.Picture | None
                     ) -> WarpSettings:
    """The job's settings with the zoom disc centred on this image's object (`ObjectError` if it has none)."""
    if ctx.boxes is not None:
        if rel not in ctx.boxes:
            raise ObjectError("--boxes has no box for it")
        box = ctx.boxes[rel]
    elif mask_pic is None:
        raise ObjectError("it has no readable mask in --masks")
    else:
        box = mask_box(mask_pic.pages[0], size)
    center, radius = object_disc(box, size, max(ctx.settings.zooms), ctx.settings.radius)
    return replace(ctx.settings, center=center, radius=radius)


def _warp_file(ctx: _Context, rel: str, outs: list[Output], mask_rel: str | None) -> dict[str, Any]:
    """Warp one source file into all its outputs (run in a worker or inline)."""
    src, dst = Path(ctx.src), Path(ctx.dst)
    def mask_name(out: Output) -> str | None:
        return mask_output(out, mask_rel)

    def done(out: Output) -> bool:
        m = mask_name(out)
        return (dst / out.dst).exists() and (m is None or (dst / m).exists())

    pending = [o for o in outs if not ctx.resume or not done(o)]
    result: dict[str, Any] = {"records": [], "written": 0, "skipped": len(outs) - len(pending), "masks": 0, "bad": []}
    try:
        if pending:
            pic = images.read_image(src / rel)
            w, h = pic.size
        else:
            w, h = images.image_size(src / rel)
    except (images.ImageReadError, OSError) as exc:
        result["bad"].append({"path": rel, "reason": _read_failure(exc)})
        return result
    too_small = size_problem(ctx.settings, w, h)
    if too_small:
        result["bad"].append({"path": rel, "reason": too_small})
        return result
    mask_pic = None
    centred = ctx.settings.center == OBJECT
    if mask_rel is not None and (pending or (centred and ctx.boxes is None)):
        try:
            mask_pic = images.read_image(Path(ctx.masks) / mask_rel)
        except (images.ImageReadError, OSError) as exc:
            result["bad"].append({"path": f"{MASKS_DIR}/{mask_rel}", "reason": str(exc)})
            mask_rel = None
    settings = ctx.settings
    if centred:
        try:
            settings = _object_settings(ctx, rel, (w, h), mask_pic)
        except ObjectError as exc:
            result["bad"].append({"path": rel, "reason": str(exc)})
            return result
    for out in outs:
        if _stopping():
            break
        warp = warp_for(settings, rel, out, (h, w))
        mask_out = mask_name(out)
        result["records"].append(manifest_record(settings, rel, out, warp, mask_out))
        if out not in pending:
            continue
        _write_warped(pic, warp, dst / out.dst, inverse=False)
        result["written"] += 1
        if mask_pic is not None:
            _write_warped(mask_pic, warp, dst / mask_out, inverse=False, nearest=True)
            result["masks"] += 1
    return result


def _write_warped(pic: images.Picture, warp: Warp, target: Path, *, inverse: bool,
                  nearest: bool = False, smooth: str = "bilinear") -> None:
    """Warp every page of ``pic`` and write it atomically (the caller has settled overwriting).

    ``smooth`` is the sampling for continuous-valued pages; label pages (palette,
    bilevel, masks) always use nearest.
    """
    def fn(x: torch.Tensor, mode: str) -> torch.Tensor:
        sampling = "nearest" if nearest or mode == "nearest" else smooth
        return apply_warp(x, warp.to(x.dtype), inverse=inverse, mode=sampling)

    convex = nearest or smooth in ("bilinear", "nearest")  # blends that cannot leave the value range
    pages = [images.warp_page(page, fn, in_range=convex) for page in pic.pages]
    try:
        images.write_image(pages, target, pic.format, pic.params, overwrite=True)
    except OSError as exc:
        raise DecError(f"cannot write {target}: {exc.strerror or exc}", "check free space and permissions") from None


def _unwarp_file(ctx: _Context, record: dict[str, Any]) -> dict[str, Any]:
    """Invert one manifest record's warp on its output file."""
    result: dict[str, Any] = {"records": [], "written": 0, "skipped": 0, "masks": 0, "bad": []}
    rel = record["dst"]
    target = Path(ctx.dst) / rel
    if ctx.resume and not ctx.overwrite and target.exists():
        result["skipped"] = 1
        return result
    try:
        pic = images.read_image(Path(ctx.src) / rel)
    except (images.ImageReadError, OSError) as exc:
        result["bad"].append({"path": rel, "reason": _read_failure(exc)})
        return result
    warp = Warp.from_knots(torch.tensor(record["knots_x"], dtype=torch.float32),
                           torch.tensor(record["knots_y"], dtype=torch.float32))
    _write_warped(pic, warp, target, inverse=True, smooth=UNWARP_SAMPLING)
    result["written"] = 1
    return result


# In a worker process: the pool's stop event, set by the parent when it is interrupted.
_STOP: Any = None


def _init_worker(stop: Any) -> None:
    """One thread per worker. Ctrl-C is the parent's to handle (`_run_tasks` starts the workers
    deaf to it): it sets ``stop``, and a worker ends its file at the next output."""
    global _STOP
    _STOP = stop
    torch.set_num_threads(1)


def _stopping() -> bool:
    return _STOP is not None and _STOP.is_set()


def _run_tasks(fn: Callable[..., dict[str, Any]], ctx: _Context, tasks: list[tuple], workers: int,
               on_progress: Callable[[int], None] | None) -> list[dict[str, Any]]:
    """Run ``fn(ctx, *task)`` for every task; results in task order whatever the worker count."""
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if workers <= 1 or len(tasks) <= 1:
            for i, task in enumerate(tasks):
                results[i] = fn(ctx, *task)
                if on_progress:
                    on_progress(1)
        else:
            mp = multiprocessing.get_context("spawn")
            stop = mp.Event()
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp, initializer=_init_worker,
                                        initargs=(stop,)) as pool:
                futures: dict[cf.Future, int] = {}
                try:
                    # Workers are started here, with SIGINT blocked: they inherit the mask, so a
                    # terminal's Ctrl-C (sent to every process of the job) reaches only this one.
                    # One that comes meanwhile waits for the unblocking.
                    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
                    try:
                        for i, task in enumerate(tasks):
                            futures[pool.submit(fn, ctx, *task)] = i
                    finally:
                        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                    for fut in cf.as_completed(futures):
                        results[futures[fut]] = fut.result()
                        if on_progress:
                            on_progress(1)
                except BaseException:
                    stop.set()
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        torch.set_num_threads(threads)
    return [r for r in results if r is not None]


# --------------------------------------------------------------------------- jobs


def plan_warp(src: str | os.PathLike, dst: str | os.PathLike, settings: WarpSettings, *,
              masks: str | os.PathLike | None = None, boxes: str | os.PathLike | None = None
              ) -> tuple[list[tuple[str, list[Output], str | None]], list[dict[str, str]]]:
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
                         f"image extensions: {' '.join(sorted(images.IMAGE_EXTENSIONS))}")
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


def check_mask_outputs(plan: Sequence[tuple[str, list[Output], str | None]]) -> None:
    """Two images never share one warped mask (``a.png`` and ``a.jpg`` both matching ``masks/a.png``):
    `UsageError` listing the clashes."""
    owner: dict[str, str] = {}
    clashes: dict[str, set[str]] = {}
    for rel, outs, mask_rel in plan:
        if mask_rel is None:
            continue
        for out in outs:
            name = mask_output(out, mask_rel)
            if owner.setdefault(name, rel) != rel:
                clashes.setdefault(mask_rel, {owner[name]}).add(rel)
    if clashes:
        listed = "; ".join(f"{MASKS_DIR}/{m} matches {' and '.join(sorted(r))}" for m, r in sorted(clashes.items())[:3])
        if len(clashes) > 3:
            listed += f"; and {len(clashes) - 3} more"
        raise UsageError(f"--masks: images would share one warped mask: {listed}",
                         "give each image its own mask name (images that differ only in extension cannot share one)")


def run_warp(src: str | os.PathLike, dst: str | os.PathLike, settings: WarpSettings = WarpSettings(), *,
             masks: str | os.PathLike | None = None, boxes: str | os.PathLike | None = None, workers: int = 1,
             overwrite: bool = False, resume: bool = False, json_path: str | None = None,
             on_start: Callable[[int], None] | None = None,
             on_progress: Callable[[int], None] | None = None) -> JobSummary:
    """Warp the tree SRC into DST (see the module docstring); returns the summary.

    One job per DST at a time (`dec_cli.joblock`); more ``workers`` than files are not started.
    ``json_path``, where the caller will write the summary, may not lie in an input folder or be
    one of this job's files.
    """
    if overwrite and resume:
        raise UsageError("--overwrite and --resume exclude each other", "use one of them")
    if workers < 1:
        raise UsageError(f"--workers must be >= 1; got {workers}")
    src_p, dst_p = Path(src), Path(dst)
    box_map = None if boxes is None else load_boxes(boxes)
    plan, scan_bad = plan_warp(src_p, dst_p, settings, masks=masks, boxes=boxes)
    names = [name for _, outs, mask_rel in plan for o in outs for name in (o.dst, mask_output(o, mask_rel)) if name]
    check_report_path(json_path, "--json", trees=[("SRC", src_p), ("--masks", masks),
                                                  ("DST/masks", dst_p / MASKS_DIR if masks is not None else None)],
                      files=[("DST", dst_p)], root=dst_p, names={*names, MANIFEST_NAME, JOB_FILE, LOCK_FILE})
    with job_lock(dst_p, f"dec warp {src_p} {dst_p}"):
        return _warp_locked(src_p, dst_p, plan, scan_bad, names, settings, masks, box_map,
                            max(1, min(workers, len(plan))), overwrite, resume, on_start, on_progress)


def _existing_outputs(dst_p: Path, names: Sequence[str]) -> list[str]:
    """The planned outputs already in DST; `UsageError` if any of them is not a dec job's recorded output."""
    existing = [name for name in names if (dst_p / name).exists()]
    if existing:
        check_own_outputs(dst_p, existing, recorded_outputs(dst_p, [MANIFEST_NAME], [JOB_FILE, UNWARP_JOB_FILE]))
    return existing


def _warp_locked(src_p: Path, dst_p: Path, plan: list[tuple[str, list[Output], str | None]],
                 scan_bad: list[dict[str, str]], names: list[str], settings: WarpSettings,
                 masks: str | os.PathLike | None, box_map: dict[str, Box] | None, workers: int, overwrite: bool,
                 resume: bool, on_start: Callable[[int], None] | None,
                 on_progress: Callable[[int], None] | None) -> JobSummary:
    """The part of `run_warp` that runs under DST's lock."""
    job = {"settings": asdict(settings), "masks": masks is not None, **({} if box_map is None else {"boxes": True})}
    job = json.loads(json.dumps(job))  # tuples -> lists, as stored on disk
    job_file = dst_p / JOB_FILE
    existing = _existing_outputs(dst_p, names)
    if resume:
        if job_file.exists():
            previous = json.loads(job_file.read_text(encoding="utf-8"))
            if {key: previous.get(key) for key in job} != job:
                raise UsageError(f"DST {dst_p} was made with different settings than these",
                                 "rerun with the original options, or use --overwrite")
    elif not overwrite:
        if existing or (dst_p / MANIFEST_NAME).exists():
            raise UsageError(
                f"DST {dst_p} already holds outputs of a warp job ({len(existing)} of {len(names)} files exist)",
                "pass --resume to finish an interrupted job or --overwrite to replace them")
    if resume or overwrite:  # a killed run (SIGKILL) could not clean up after itself
        remove_stale_temporaries(dst_p, recursive=True)
    write_json({**job, "outputs": names}, job_file)
    summary = JobSummary("warp", str(src_p), str(dst_p), files=len(plan),
                         outputs=sum(len(outs) for _, outs, _ in plan), workers=workers)
    ctx = _Context(str(src_p), str(dst_p), None if masks is None else str(masks), settings, overwrite, resume,
                   box_map)
    if on_start:
        on_start(len(plan))
    start = time.perf_counter()
    results = _run_tasks(_warp_file, ctx, plan, workers, on_progress)
    summary.bad.extend(scan_bad)
    records = _collect(summary, results)
    manifest = dst_p / MANIFEST_NAME
    write_text_atomic(manifest, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
    summary.manifest = str(manifest)
    summary.seconds = time.perf_counter() - start
    return summary


def run_unwarp(src: str | os.PathLike, dst: str | os.PathLike, manifest: str | os.PathLike | None = None, *,
               workers: int = 1, overwrite: bool = False, resume: bool = False, json_path: str | None = None,
               on_start: Callable[[int], None] | None = None,
               on_progress: Callable[[int], None] | None = None) -> JobSummary:
    """Invert every warp recorded in ``manifest`` (default ``SRC/manifest.jsonl``) into DST.

    Locking, ``workers`` and ``json_path`` as for `run_warp`.
    """
    if overwrite and resume:
        raise UsageError("--overwrite and --resume exclude each other", "use one of them")
    if workers < 1:
        raise UsageError(f"--workers must be >= 1; got {workers}")
    src_p, dst_p = Path(src), Path(dst)
    check_tree_paths(src_p, dst_p)
    manifest_p = Path(manifest) if manifest is not None else src_p / MANIFEST_NAME
    found = read_manifest(manifest_p, roots=(src_p, dst_p), warps=True)
    names = [r["dst"] for r in found.records]
    check_report_path(json_path, "--json", trees=[("SRC", src_p)], files=[("--manifest", manifest_p), ("DST", dst_p)],
                      root=dst_p, names={*names, UNWARP_JOB_FILE, LOCK_FILE})
    with job_lock(dst_p, f"dec unwarp {src_p} {dst_p}"):
        return _unwarp_locked(src_p, dst_p, found, names, max(1, min(workers, len(found.records))), overwrite,
                              resume, on_start, on_progress)


def _unwarp_locked(src_p: Path, dst_p: Path, found: Manifest, names: list[str], workers: int,
                   overwrite: bool, resume: bool, on_start: Callable[[int], None] | None,
                   on_progress: Callable[[int], None] | None) -> JobSummary:
    """The part of `run_unwarp` that runs under DST's lock."""
    records = found.records
    existing = _existing_outputs(dst_p, names)
    if not overwrite and not resume:
        if existing:
            raise UsageError(f"DST {dst_p} already holds {len(existing)} of the {len(records)} outputs",
                             "pass --resume to finish or --overwrite to replace them")
    if resume or overwrite:
        remove_stale_temporaries(dst_p, recursive=True)
    write_json({"outputs": names}, dst_p / UNWARP_JOB_FILE)
    summary = JobSummary("unwarp", str(src_p), str(dst_p), files=len(records) + len(found.bad),
                         outputs=len(records), workers=workers, bad=[b.entry(found.path) for b in found.bad])
    ctx = _Context(str(src_p), str(dst_p), None, WarpSettings(), overwrite, resume)
    if on_start:
        on_start(len(records))
    start = time.perf_counter()
    _collect(summary, _run_tasks(_unwarp_file, ctx, [(r,) for r in records], workers, on_progress))
    summary.seconds = time.perf_counter() - start
    return summary


def _collect(summary: JobSummary, results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for r in results:
        records.extend(r["records"])
        summary.written += r["written"]
        summary.skipped_existing += r["skipped"]
        summary.masks += r["masks"]
        summary.bad.extend(r["bad"])
    return records
