"""The per-file work of `dec warp` and `dec unwarp`, inline or in a pool of worker processes.

`warp_file` warps one source image (and its mask) into all its outputs and
returns their manifest records; `unwarp_file` inverts one record's warp;
`run_tasks` runs either over every task, results in task order whatever the
number of workers, and stops the pool cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from dec_cli.trees import images
from dec_cli.core.errors import DecError
from dec_cli.trees.objects import OBJECT, Box, ObjectError, object_box, object_disc
from dec_cli.core.stopsignal import STOP_SIGNALS
from dec_cli.trees.treeformat import MASKS_DIR, mask_name
from dec_cli.warps.warp import Warp
from dec_cli.warps.apply import apply_warp
from dec_cli.trees.warpplan import Output, WarpSettings, manifest_record, size_problem, warp_for

# Unwarping resamples a second time; bicubic keeps more of the detail the first pass kept.
UNWARP_SAMPLING = "bicubic"


def _read_failure(exc: Exception) -> str:
    """The reason a source file could not be read, for the bad-file list."""
    if isinstance(exc, images.ImageReadError):
        return str(exc)
    return f"cannot read: {getattr(exc, 'strerror', None) or exc}"


@dataclass(frozen=True)
class JobContext:
    """What every task of a job shares (sent once to each worker process)."""

    src: str
    dst: str
    masks: str | None
    settings: WarpSettings
    overwrite: bool
    resume: bool
    boxes: dict[str, Box] | None = None


def _object_settings(ctx: JobContext, rel: str, size: tuple[int, int], mask_pic: images.Picture | None
                     ) -> WarpSettings:
    """The job's settings with the zoom disc centred on this image's object (`ObjectError` if it has none)."""
    box = object_box(rel, ctx.boxes, None if mask_pic is None else mask_pic.pages[0], size)
    center, radius = object_disc(box, size, ctx.settings.zooms, ctx.settings.radius)
    return replace(ctx.settings, center=center, radius=radius)


def warp_file(ctx: JobContext, rel: str, outs: list[Output], mask_rel: str | None) -> dict[str, Any]:
    """Warp one source file into all its outputs (run in a worker or inline)."""
    src, dst = Path(ctx.src), Path(ctx.dst)

    def mask_of(out: Output) -> str | None:
        return mask_name(out.dst, mask_rel)

    def done(out: Output) -> bool:
        m = mask_of(out)
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
        mask_out = mask_of(out)
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


def unwarp_file(ctx: JobContext, record: dict[str, Any]) -> dict[str, Any]:
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
    """One thread per worker. Ctrl-C is the parent's to handle (`run_tasks` starts the workers
    deaf to it): it sets ``stop``, and a worker ends its file at the next output."""
    global _STOP
    _STOP = stop
    torch.set_num_threads(1)


def _stopping() -> bool:
    return _STOP is not None and _STOP.is_set()


def run_tasks(fn: Callable[..., dict[str, Any]], ctx: JobContext, tasks: list[tuple], workers: int,
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
            _run_in_pool(fn, ctx, tasks, workers, results, on_progress)
    finally:
        torch.set_num_threads(threads)
    return [r for r in results if r is not None]


def _start_method() -> str:
    """``fork`` on Linux, as PyTorch's DataLoader: a worker starts at once with torch already imported
    (a spawned one spends about 2 s importing torch, which on a folder of a few hundred photos is most
    of the job, so two workers were no faster than one). ``spawn`` elsewhere (macOS, Windows), where
    forking a process that has started threads is unsafe."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _run_in_pool(fn: Callable[..., dict[str, Any]], ctx: JobContext, tasks: list[tuple], workers: int,
                 results: list[dict[str, Any] | None], on_progress: Callable[[int], None] | None) -> None:
    """`run_tasks` on ``workers`` worker processes, filling ``results``; on any exception (Ctrl-C included)
    the workers are told to stop and are waited for before it propagates."""
    mp = multiprocessing.get_context(_start_method())
    stop = mp.Event()
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp, initializer=_init_worker,
                                initargs=(stop,)) as pool:
        futures: dict[cf.Future, int] = {}
        try:
            # Workers are started here, with SIGINT and SIGTERM blocked: they inherit the mask,
            # so a terminal's Ctrl-C or a scheduler's SIGTERM (sent to every process of the job)
            # reaches only this one. One that comes meanwhile waits for the unblocking.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
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
