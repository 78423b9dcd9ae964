"""The zoom-sweep and worker-scaling loops of `bench/warp_folder.py` (imported from there).

* `zoom_vs_random`: on photos resized to S x S, one worker, the wall time per
  output of `dec warp --zoom` with ten factors against `dec warp --copies 10`
  (the same number of outputs, the same decode and encode work), interleaved,
  best of ``repeats``. Two zoom variants: a fixed centre (every image of a size
  shares each factor's sampling grid, which is cached) and ``--center object``
  with a different box per image (every output builds its own grid).
* `worker_scaling`: files/s of `dec warp` (random warps) with each ``--workers``
  count on one folder.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Sequence

from PIL import Image

from dec_cli.jobs.folderwarp import run_warp
from dec_cli.trees.warpplan import WarpSettings

ZOOMS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.1, 1.25, 1.4, 1.6, 1.8)


def square_tree(files: Sequence[Path], out: Path, side: int) -> Path:
    """The photos resized to ``side x side`` (PNG), one folder; returns the folder."""
    out.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        Image.open(f).convert("RGB").resize((side, side), Image.Resampling.BILINEAR).save(out / f"p{i:03d}.png")
    return out


def _boxes(folder: Path, side: int) -> Path:
    """A JSON box per image, each somewhere else (so no two outputs share a sampling grid)."""
    boxes = {}
    for i, f in enumerate(sorted(folder.iterdir())):
        cx, cy, r = side * (0.35 + 0.3 * ((i * 7) % 11) / 10), side * (0.35 + 0.3 * ((i * 3) % 7) / 6), side * 0.1
        boxes[f.name] = [cx - r, cy - r, cx + r, cy + r]
    path = folder.parent / f"boxes-{side}.json"
    path.write_text(json.dumps(boxes))
    return path


def zoom_vs_random(files: Sequence[Path], tmp: Path, sizes: Sequence[int], repeats: int) -> dict:
    """Per size: best wall seconds per output of each loop, and the zoom / random ratios."""
    out: dict = {}
    for side in sizes:
        src = square_tree(files, tmp / f"square-{side}" / "src", side)
        boxes = _boxes(src, side)
        loops = {
            "random": dict(settings=WarpSettings(copies=len(ZOOMS))),
            "zoom": dict(settings=WarpSettings(zooms=ZOOMS)),
            "zoom_object": dict(settings=WarpSettings(zooms=ZOOMS, center="object", radius=None), boxes=boxes),
        }
        best = {name: float("inf") for name in loops}
        for rep in range(repeats):
            order = list(loops)[rep % len(loops):] + list(loops)[:rep % len(loops)]
            for name in order:
                dst = tmp / f"square-{side}" / f"{name}-{rep}"
                start = time.perf_counter()
                run_warp(src, dst, workers=1, **loops[name])
                best[name] = min(best[name], (time.perf_counter() - start) / (len(files) * len(ZOOMS)))
                shutil.rmtree(dst)
        out[str(side)] = {"ms_per_output": {k: 1000 * v for k, v in best.items()},
                          "zoom_vs_random": best["zoom"] / best["random"],
                          "zoom_object_vs_random": best["zoom_object"] / best["random"]}
    return out


def worker_scaling(src: Path, tmp: Path, workers: Sequence[int], repeats: int) -> dict:
    """files/s of `dec warp` per worker count (best of ``repeats``) and each count's speed-up over the first."""
    rate: dict[str, float] = {}
    for rep in range(repeats):
        for n in workers:
            dst = tmp / f"workers-{n}-{rep}"
            summary = run_warp(src, dst, WarpSettings(), workers=n)
            rate[str(n)] = max(rate.get(str(n), 0.0), summary.files / (summary.seconds or 1e-9))
            shutil.rmtree(dst)
    first = rate[str(workers[0])]
    return {"files_per_s": rate, "speedup": {k: v / first for k, v in rate.items()}}


def print_zoom_rows(results: dict, photos: int, scaling_files: int) -> None:
    """The zoom-sweep and scaling lines of the bench's printout."""
    print(f"zoom sweep ({photos} photos x 10 factors, one worker) vs --copies 10:")
    for side, row in results["zoom_sweep"].items():
        ms = row["ms_per_output"]
        print(f"  {side}x{side}: random {ms['random']:.1f} ms, zoom {ms['zoom']:.1f} ms "
              f"({row['zoom_vs_random']:.2f}x; target <= 1.5x, goal 1.1x), zoom per-image object "
              f"{ms['zoom_object']:.1f} ms ({row['zoom_object_vs_random']:.2f}x)")
    scale = results["workers"]
    print(f"--workers on {scaling_files} photos: " + ", ".join(
        f"{n}: {scale['files_per_s'][n]:.1f} files/s ({scale['speedup'][n]:.2f}x)" for n in scale["files_per_s"])
        + " (target: 2 workers >= 1.7x on 2 cores)")
