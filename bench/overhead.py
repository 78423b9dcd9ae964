"""Cost of a DEC retrofit: time and memory ratios DEC-retrofitted / plain backbone.

Same weights, same process, runs alternate (plain, DEC, plain, DEC, ...) so
that load from other processes hits both alike; we report medians of the
per-pair ratios. Measures inference, one training step (forward, backward,
AdamW) and peak training memory.

CPU (default): vit_small_patch16_224, batch 8, float32.
    python bench/overhead.py --repeats 15 --threads 2
GPU: vit_base_patch16_224, batch 64, bf16 autocast, eager and
torch.compile(mode="reduce-overhead") side by side.
    python bench/overhead.py --device cuda

Peak training memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the
peak of live tensor bytes during one training step, from the PyTorch profiler's
allocation records (``profile_memory=True``), params, grads and AdamW state
included (they are allocated before the step and counted as the baseline).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dec_cli.backbones.backbone import create_backbone  # noqa: E402
from dec_cli.canon.retrofit import backbone_parameters, count_parameters, dec_parameters, retrofit  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def make_models(name: str, device: str, seed: int, dec_kwargs: dict):
    torch.manual_seed(seed)
    plain = create_backbone(name).to(device)
    dec = retrofit(copy.deepcopy(plain), **dec_kwargs).to(device)
    return plain, dec


def mark_step() -> None:
    """Tell CUDA-graph trees (torch.compile mode="reduce-overhead") that a new iteration begins."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "cudagraph_mark_step_begin"):
        compiler.cudagraph_mark_step_begin()


def autocast(device: str, amp: bool):
    if amp:
        return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def infer_ratio(models: dict, x, device: str, amp: bool, repeats: int, warmup: int) -> dict:
    def run(m):
        def f():
            mark_step()
            with torch.no_grad(), autocast(device, amp):
                m(x)
        return f

    fns = {k: run(m) for k, m in models.items()}
    return summarize(alternate(fns, device, repeats, warmup))


def alternate(fns: dict, device: str, repeats: int, warmup: int) -> dict:
    """Warm up, then time the functions in turn (plain, DEC, plain, ...) so drift hits both alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            times[k].append(timed(f, device))
    return times


def train_ratio(models: dict, x, y, device: str, amp: bool, repeats: int, warmup: int) -> dict:
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-5) for k, m in models.items()}

    def step(k):
        m, opt = models[k], opts[k]

        def f():
            mark_step()
            opt.zero_grad(set_to_none=True)
            with autocast(device, amp):
                loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
        return f

    fns = {k: step(k) for k in models}
    for m in models.values():
        m.train()
    out = summarize(alternate(fns, device, repeats, warmup))
    out["peak_memory"] = peak_memory(models, fns, device)
    for m in models.values():
        m.eval()
    return out


def summarize(times: dict) -> dict:
    """Median per-pair ratios of wall time and of process CPU time.

    On a shared CPU the CPU-time ratio is the steadier figure: time spent
    waiting for a core is not counted.
    """
    out = {"repeats": len(times["plain"])}
    for i, clock in enumerate(("wall", "cpu")):
        plain = [t[i] for t in times["plain"]]
        dec = [t[i] for t in times["dec"]]
        ratios = [d / p for p, d in zip(plain, dec)]
        out[clock] = {"median_s": {"plain": statistics.median(plain), "dec": statistics.median(dec)},
                      "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
    return out


def cpu_peak_bytes(fn) -> int:
    """Peak of live CPU tensor bytes during ``fn`` (profiler allocation records), above the start."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Allocations and frees inside an op are its "self" memory; the rest are "[memory]" records.
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return int(peak)


def peak_memory(models: dict, fns: dict, device: str) -> dict:
    static = {k: sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers())) * 4
              for k, m in models.items()}  # params + grads + AdamW exp_avg + exp_avg_sq
    peaks = {}
    for k, f in fns.items():
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            f()
            torch.cuda.synchronize()
            peaks[k] = int(torch.cuda.max_memory_allocated())
        else:
            # zero_grad(set_to_none) frees grads at the start: their bytes come back during backward,
            # so the transient peak plus the params and AdamW state that stay allocated is the total.
            peaks[k] = cpu_peak_bytes(f) + static[k] // 4 * 3
    return {"bytes": peaks, "ratio": peaks["dec"] / peaks["plain"],
            "method": "torch.cuda.max_memory_allocated" if device.startswith("cuda")
            else "torch.profiler(profile_memory=True): peak of live tensor bytes over one step, op by op, "
            "+ params + AdamW state"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="GPU: skip the torch.compile runs")
    ap.add_argument("--compile", action="store_true", help="CPU: also run the torch.compile comparison")
    ap.add_argument("--at", default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--grid", type=int, default=None)
    ap.add_argument("--solver", choices=("fixed", "anderson"), default=None)
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--dec-input", choices=("features", "image"), default=None,
                    help="the latent DEC (features, default) or the image DEC (image)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    gpu = args.device.startswith("cuda")
    name = args.model or ("vit_base_patch16_224" if gpu else "vit_small_patch16_224")
    batch = args.batch or (64 if gpu else 8)
    repeats = args.repeats or (30 if gpu else 11)
    amp = gpu
    torch.set_num_threads(args.threads)
    dec_kwargs = {k: v for k, v in dict(at=args.at, iters=args.iters, grid=args.grid, solver=args.solver,
                                        hidden=args.hidden, dec_input=args.dec_input).items() if v is not None}
    plain, dec = make_models(name, args.device, 0, dec_kwargs)
    for m in (plain, dec):
        m.eval()
    size = tuple(getattr(getattr(plain, "patch_embed", None), "img_size", None)
                 or plain.pretrained_cfg.get("input_size", (3, 224, 224))[1:])
    x = torch.randn(batch, 3, *size, device=args.device)
    y = torch.randint(0, plain.num_classes, (batch,), device=args.device)
    with torch.no_grad():
        assert (plain(x) - dec(x)).abs().max().item() <= 1e-3, "identity at init violated"
    result = {
        "model": name, "batch": batch, "device": args.device, "dtype": "bf16 autocast" if amp else "float32",
        "threads": args.threads, "recipe": dec.dec_info["recipe"]["name"], "at": dec.dec_info["recipe"]["at"],
        "dec_settings": dec.dec_info["recipe"]["dec"],
        "dec_input": dec.dec_info["recipe"].get("input", "features"),
        "parameters": {"backbone": count_parameters(backbone_parameters(dec)),
                       "dec": count_parameters(dec_parameters(dec))},
        "torch": torch.__version__,
    }
    models = {"plain": plain, "dec": dec}
    result["eager"] = {"inference": infer_ratio(models, x, args.device, amp, repeats, args.warmup)}
    print(json.dumps({"eager inference": result["eager"]["inference"]}, indent=1), flush=True)
    if not args.no_train:
        result["eager"]["train_step"] = train_ratio(models, x, y, args.device, amp, max(3, repeats // 2),
                                                    args.warmup)
        print(json.dumps({"eager train": result["eager"]["train_step"]}, indent=1), flush=True)
    if (gpu or args.compile) and not args.no_compile:
        compiled = {k: torch.compile(m, mode="reduce-overhead") for k, m in models.items()}
        result["compiled"] = {"inference": infer_ratio(compiled, x, args.device, amp, repeats, 5)}
        print(json.dumps({"compiled inference": result["compiled"]["inference"]}, indent=1), flush=True)
        if not args.no_train:
            result["compiled"]["train_step"] = train_ratio(compiled, x, y, args.device, amp, max(3, repeats // 2), 5)
            print(json.dumps({"compiled train": result["compiled"]["train_step"]}, indent=1), flush=True)
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
