"""Benchmark `dec warp` against a plain Pillow decode+encode loop and an albumentations loop.

Builds a tree of about 100 real photographs (resized and cropped variants of
the sample photos) in a temporary folder, then times, in this one process and
with one thread, interleaved (the order rotates each round, so no loop always
runs right after another's writes), best of ``--repeats`` (and the median over
rounds of the paired ratios, which a single lucky or unlucky run moves less):

* ``pillow``: decode, encode with the same save parameters `dec warp` uses;
* ``dec warp``: the whole job (decode, keyed warp, encode, manifest), one worker;
* ``albumentations``: decode, ``GridDistortion``, encode with the same
  parameters (only if albumentations is importable: it is not a dependency);

and the warp kernel alone: ``apply_warp`` (grid build + sampling) against
``torch.nn.functional.grid_sample`` alone on a 224x224 RGB float image, in
short rounds between the folder loops.

Encoding is most of every loop's time and depends on the pixels, so the bench
also re-encodes, in memory, the PNG pages each loop wrote, with the same
parameters: the CPU time per file and the bytes show how much of a gap is
the cost of encoding one warp's output rather than the other's (the warp
itself is not timed there).

Then (`bench/zoom_sweep.py`) the zoom sweep against random warps, one worker,
on photos resized to each ``--zoom-sizes`` square (target: zoom output / random
output <= 1.5x, goal 1.1x), and files/s per ``--workers`` count on a folder of
``--scaling-files`` photos (target: 2 workers >= 1.7x one on 2 cores).

    python bench/warp_folder.py [--photos DIR] [--files 100] [--repeats 3] [--json PATH]
                                [--zoom-sizes 224,512] [--zoom-files 15] [--workers 1,2] [--scaling-files 200]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dec_cli.trees import images
from dec_cli.jobs.folderwarp import run_warp
from dec_cli.warps.randomwarp import keyed_warp
from dec_cli.trees.treeformat import is_image_path
from dec_cli.warps.apply import apply_warp
from dec_cli.warps.warpgrid import sampling_grid
from dec_cli.trees.warpplan import WarpSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoom_sweep import print_zoom_rows, worker_scaling, zoom_vs_random  # noqa: E402  (this folder's sibling module)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PHOTOS = [ROOT.parent / "shared" / "data" / "photos", ROOT / "examples" / "photos"]


def make_tree(photos: Path, out: Path, n_files: int) -> list[Path]:
    """Resized and cropped variants of the photographs, in their own format, into class folders."""
    sources = sorted(p for p in photos.iterdir() if is_image_path(p) and p.suffix.lower() in (".png", ".jpg"))
    sources = [p for p in sources if min(Image.open(p).size) >= 150]
    rng = np.random.default_rng(0)
    made = []
    for i in range(n_files):
        src = sources[i % len(sources)]
        im = Image.open(src)
        im.load()
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = im.crop((x0, y0, x0 + cw, y0 + ch))
        side = int(rng.integers(224, 513))
        scale = side / max(cw, ch)
        crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BILINEAR)
        target = out / src.stem / f"{src.stem}_{i:03d}{src.suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        params = {"quality": 90} if src.suffix.lower() == ".jpg" else {}
        crop.save(target, **params)
        made.append(target)
    return made


def pillow_loop(files: list[Path], root: Path, dst: Path) -> None:
    """Plain Pillow: open, decode, encode with the same save parameters `dec warp` uses (no warp)."""
    for f in files:
        with Image.open(f) as im:
            im.load()
            params = images._save_params(im, im.format)
            target = dst / f.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            im.save(target, format=im.format, **params)


def albumentations_loop(files: list[Path], root: Path, dst: Path) -> None:
    """The same I/O as the Pillow loop, with albumentations' GridDistortion in between."""
    import albumentations as A
    import cv2

    cv2.setNumThreads(1)  # one worker, one thread, like the other loops
    aug = A.GridDistortion(num_steps=8, distort_limit=0.3, p=1.0)
    for f in files:
        pic = images.read_image(f)
        page = pic.pages[0]
        out = Image.fromarray(aug(image=np.asarray(page))["image"], page.mode)
        target = dst / f.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        out.save(target, format=pic.format, **pic.params)


def output_encode_cost(folders: dict[str, Path], repeats: int = 5) -> dict[str, dict]:
    """Per loop: CPU ms and kB per file to re-encode, in memory, the PNG pages it wrote.

    Every file is encoded for each loop in turn, ``repeats`` times, keeping each
    file's fastest time: bursts of load on the machine hit all loops alike.
    """
    pages = {name: [images.read_image(f) for f in sorted(folder.rglob("*.png"))] for name, folder in folders.items()}
    n = min(len(p) for p in pages.values())  # every loop writes the same files
    best = {name: [float("inf")] * n for name in folders}
    size = {name: 0 for name in folders}
    for rep in range(repeats):
        for i in range(n):
            for name in folders:
                pic = pages[name][i]
                buf = io.BytesIO()
                start = time.process_time()
                pic.pages[0].save(buf, format="PNG", **pic.params)
                best[name][i] = min(best[name][i], time.process_time() - start)
                if rep == 0:
                    size[name] += buf.tell()
    return {name: {"png_files": n, "encode_ms": sum(t) / n * 1e3, "kB": size[name] / n / 1e3}
            for name, t in best.items()}


class KernelTimer:
    """apply_warp (grid build + sampling) against grid_sample alone, 224x224 RGB float32, CPU time.

    Timed in short rounds, the order alternating, spread over the whole bench
    (a few rounds between folder loops): on a shared machine load comes in
    bursts, and each side's quietest round is the closest to its own cost.
    """

    def __init__(self, n: int = 50) -> None:
        self.n = n
        self.x = torch.rand(1, 3, 224, 224)
        self.warp = keyed_warp(0, "kernel")
        self.grid = sampling_grid(self.warp, 224, 224)
        self.best = {"grid_sample": float("inf"), "apply_warp": float("inf")}
        self.rounds = 0
        for _ in range(20):
            self._grid_sample()
            self._apply_warp()

    def _grid_sample(self) -> None:
        F.grid_sample(self.x, self.grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _apply_warp(self) -> None:
        apply_warp(self.x, self.warp)

    def run(self, rounds: int) -> None:
        fns = {"grid_sample": self._grid_sample, "apply_warp": self._apply_warp}
        for _ in range(rounds):
            order = list(fns) if self.rounds % 2 == 0 else list(fns)[::-1]
            self.rounds += 1
            for name in order:
                start = time.process_time()  # CPU time: robust to other processes on the machine
                for _ in range(self.n):
                    fns[name]()
                self.best[name] = min(self.best[name], (time.process_time() - start) / self.n)

    def result(self) -> dict:
        return {"grid_sample_us": self.best["grid_sample"] * 1e6, "apply_warp_us": self.best["apply_warp"] * 1e6,
                "ratio": self.best["apply_warp"] / self.best["grid_sample"], "rounds": self.rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=None)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--zoom-sizes", default="224,512")
    parser.add_argument("--zoom-files", type=int, default=15)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--scaling-files", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    photos = args.photos or next((p for p in DEFAULT_PHOTOS if p.is_dir()), None)
    if photos is None:
        sys.exit("error: no photo folder found (hint: pass --photos DIR)")
    try:
        import albumentations  # noqa: F401

        have_albu = True
    except ImportError:
        have_albu = False

    results: dict = {}
    kernel = KernelTimer()
    with tempfile.TemporaryDirectory(prefix="dec-bench-") as tmp:
        tmp = Path(tmp)
        files = make_tree(photos, tmp / "src", args.files)
        megapixels = sum(Image.open(f).size[0] * Image.open(f).size[1] for f in files) / 1e6
        names = ["pillow", "dec_warp"] + (["albumentations"] if have_albu else [])
        best = {n: float("inf") for n in names}  # wall seconds
        best_cpu = {n: float("inf") for n in names}  # CPU seconds of this process (robust to other load)
        rounds: list[dict[str, float]] = []  # wall seconds per interleaved round, for paired ratios
        for rep in range(args.repeats):
            rounds.append({})
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                out = tmp / f"{name}-{rep}"
                start, start_cpu = time.perf_counter(), time.process_time()
                if name == "pillow":
                    pillow_loop(files, tmp / "src", out)
                elif name == "albumentations":
                    albumentations_loop(files, tmp / "src", out)
                else:
                    run_warp(tmp / "src", out, WarpSettings(), workers=1)
                rounds[-1][name] = time.perf_counter() - start
                best[name] = min(best[name], rounds[-1][name])
                best_cpu[name] = min(best_cpu[name], time.process_time() - start_cpu)
                if rep < args.repeats - 1:
                    shutil.rmtree(out)
                kernel.run(rounds=3)
        encode_cost = output_encode_cost({name: tmp / f"{name}-{args.repeats - 1}" for name in names})
        sizes = [int(v) for v in args.zoom_sizes.split(",")]
        results["zoom_sweep"] = zoom_vs_random(files[:args.zoom_files], tmp, sizes, args.repeats)
        scaling_src = tmp / "scaling"
        make_tree(photos, scaling_src, args.scaling_files)
        results["workers"] = worker_scaling(scaling_src, tmp, [int(v) for v in args.workers.split(",")], args.repeats)
    results["kernel"] = kernel.result()
    results["files"] = len(files)
    results["megapixels"] = round(megapixels, 2)
    results["files_per_s"] = {k: len(files) / v for k, v in best.items()}
    results["files_per_cpu_s"] = {k: len(files) / v for k, v in best_cpu.items()}
    results["output_encode"] = encode_cost
    results["dec_vs_pillow"] = best["pillow"] / best["dec_warp"]
    results["dec_vs_pillow_cpu"] = best_cpu["pillow"] / best_cpu["dec_warp"]
    results["dec_vs_pillow_median_round"] = statistics.median(r["pillow"] / r["dec_warp"] for r in rounds)
    if have_albu:
        results["dec_vs_albumentations"] = best["albumentations"] / best["dec_warp"]
        results["dec_vs_albumentations_cpu"] = best_cpu["albumentations"] / best_cpu["dec_warp"]
        results["dec_vs_albumentations_median_round"] = statistics.median(
            r["albumentations"] / r["dec_warp"] for r in rounds)

    k = results["kernel"]
    print(f"photos: {len(files)} files, {megapixels:.1f} MP, from {photos}; one worker, one thread")
    wall, cpu = results["files_per_s"], results["files_per_cpu_s"]
    print("| loop | files/s (wall) | vs pillow | files per CPU-s | vs pillow |")
    print("|---|---|---|---|---|")
    for name in wall:
        print(f"| {name} | {wall[name]:.1f} | {wall[name] / wall['pillow']:.2f}x "
              f"| {cpu[name]:.1f} | {cpu[name] / cpu['pillow']:.2f}x |")
    if not have_albu:
        print("| albumentations | not installed (pip install albumentations to compare) | | | |")
    print(f"kernel 224x224 RGB: grid_sample {k['grid_sample_us']:.0f} us, apply_warp {k['apply_warp_us']:.0f} us, "
          f"ratio {k['ratio']:.2f}x (target <= 1.5x)")
    print(f"dec warp / pillow: {results['dec_vs_pillow']:.2f}x wall, {results['dec_vs_pillow_cpu']:.2f}x CPU, "
          f"{results['dec_vs_pillow_median_round']:.2f}x median of rounds (target >= 0.75x)")
    if have_albu:
        print(f"dec warp / albumentations: {results['dec_vs_albumentations']:.2f}x wall, "
              f"{results['dec_vs_albumentations_cpu']:.2f}x CPU, "
              f"{results['dec_vs_albumentations_median_round']:.2f}x median of rounds (target >= 1x)")
    print("re-encoding each loop's PNG outputs (same parameters, CPU time, warp not timed):")
    for name, cost in encode_cost.items():
        print(f"  {name}: {cost['encode_ms']:.2f} ms and {cost['kB']:.1f} kB per file ({cost['png_files']} PNG files)")
    print_zoom_rows(results, len(files[:args.zoom_files]), args.scaling_files)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
