"""The evaluation loop: models x image folder -> a :class:`Report`.

Each image is classified clean and under K random monotone warps applied on
the fly to the preprocessed batch. The warps of an image depend only on
``--seed`` and its relative path (never on batch size, worker count, world
size or ``--limit``), and every model sees the same warps. Under torchrun
each rank evaluates an unpadded shard; per-image records are gathered and
aggregated in image order, so the report equals the single-process one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from dec_cli import __version__
from dec_cli import distributed as D
from dec_cli.data import ImageDataset, ImageFolderData, collate_skip, data_config, eval_transform, scan_image_folder
from dec_cli.data import class_to_output
from dec_cli.errors import UsageError
from dec_cli.diagnostics import Probe, capture, dec_blocks, summarize_dec
from dec_cli.memory import EVAL_ACTIVATIONS, check_batch_fits
from dec_cli.metrics import (LABEL_METRICS, Threshold, batch_records, concat_records, sort_records, summarize,
                             warp_strength)
from dec_cli.tta import ScaleSearch, check_tta_scales
from dec_cli.randomwarp import check_grid_rows, image_key, keyed_warp
from dec_cli.scalerange import DEFAULT_SCALE_RANGE, ScaleRange
from dec_cli.warp import Warp, apply_warp

SCHEMA_VERSION = 1
DEFAULT_WARPS = 4

ProgressFn = Callable[[str, int, int], None]


@dataclass
class EvalSettings:
    """Everything that shapes the numbers (``warps=None``: 4, or 0 on a zoom-sweep tree)."""

    warps: Optional[int] = None
    scale_range: ScaleRange = DEFAULT_SCALE_RANGE
    grid: int = 8
    rows: int = 1
    seed: int = 0
    img_size: Optional[int] = None
    limit: Optional[int] = None
    batch_size: int = 32
    workers: int = 0
    device: Optional[str] = None
    amp: bool = False
    compile: bool = False
    class_map: Optional[str] = None
    no_labels: bool = False  # compare with the model's own clean predictions even on a labelled tree
    tta_scales: tuple[float, ...] = ()  # non-empty: also report NAME+tta (dec_cli.tta.ScaleSearch)

    def __post_init__(self) -> None:
        # A plain (lo, hi) pair from Python goes through ScaleRange's one check (ValueError if out of bounds).
        self.scale_range = ScaleRange.of(self.scale_range)


@dataclass
class ModelSpec:
    """A model to evaluate: a DEC checkpoint path or a timm name, plus its weights source."""

    source: str
    weights: Optional[str] = None
    pretrained: bool = False


@dataclass
class ModelResult:
    """One model's results; ``metrics`` is deterministic for a fixed seed, ``timing`` is not."""

    name: str
    source: str
    model_name: str
    dec: bool
    num_classes: int
    class_mapping: Optional[str]  # None in a label-free run
    input_size: list[int]
    metrics: dict[str, Any]
    per_zoom: list[dict[str, Any]]
    per_strength: list[dict[str, Any]]
    timing: dict[str, Any]
    weights_conversion: Optional[dict[str, Any]] = None  # --weights renamed from a foreign key layout
    dec_modules: list[dict[str, Any]] = field(default_factory=list)  # dec_cli.diagnostics.summarize_dec


@dataclass
class Report:
    """The outcome of ``dec evaluate``; :meth:`to_dict` is the JSON document (see dec_cli.report)."""

    data: dict[str, Any]
    settings: dict[str, Any]
    models: list[ModelResult]
    unreadable: list[dict[str, str]] = field(default_factory=list)
    fail_if: list[dict[str, Any]] = field(default_factory=list)

    @property
    def zoom_sweep(self) -> bool:
        return bool(self.data.get("zoom_sweep"))

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [row for row in self.fail_if if row["violated"]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "dec", "version": __version__, "command": "evaluate"},
            "data": self.data,
            "settings": self.settings,
            "models": [asdict(m) for m in self.models],
            "unreadable": self.unreadable,
            "fail_if": self.fail_if,
        }


# --------------------------------------------------------------------------- model loading


def load_for_eval(spec: ModelSpec, device: torch.device) -> torch.nn.Module:
    """Load a checkpoint or timm model (eval mode) through ``dec_cli.checkpoint.load_model``."""
    from dec_cli.checkpoint import load_model

    model = load_model(spec.source, weights=spec.weights, device=str(device), pretrained=spec.pretrained)
    return model.eval()


def _model_info(model: torch.nn.Module, spec: ModelSpec) -> dict[str, Any]:
    info = dict(getattr(model, "dec_info", None) or {})
    info.setdefault("model_name", getattr(model, "default_cfg", {}).get("architecture", spec.source))
    info.setdefault("num_classes", int(getattr(model, "num_classes", 0) or 0))
    info.setdefault("class_names", None)
    info.setdefault("dec", False)
    return info


def _dec_modules(model: torch.nn.Module, info: dict[str, Any]) -> list[torch.nn.Module]:
    if not info.get("dec"):
        return []
    from dec_cli.retrofit import dec_modules

    return list(dec_modules(model))


def display_names(specs: Sequence[ModelSpec]) -> list[str]:
    """Short, unique names for the report: a checkpoint's file stem or the timm name."""
    names = []
    for spec in specs:
        path = Path(spec.source)
        names.append(path.stem if path.suffix and path.exists() else spec.source)
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if names.count(name) == 1 else f"{name}#{seen[name]}")
    return out


# --------------------------------------------------------------------------- warps


def image_warps(rel: str, k: int, settings: EvalSettings) -> Warp:
    """The K random warps of one image: a function of (seed, relative path) only."""
    return keyed_warp(settings.seed, image_key(rel), k, grid=settings.grid, rows=settings.rows,
                      scale_range=settings.scale_range)


def batch_warps(rels: Sequence[str], k: int, settings: EvalSettings, cache: dict[str, Warp]) -> Warp:
    """Warps for a batch, image-major: rows ``i*K .. i*K+K-1`` belong to image ``i``."""
    parts = []
    for rel in rels:
        if rel not in cache:
            cache[rel] = image_warps(rel, k, settings)
        parts.append(cache[rel])
    return Warp(*(torch.cat([getattr(w, f) for w in parts], dim=0) for f in ("xs_x", "ys_x", "xs_y", "ys_y")))


# --------------------------------------------------------------------------- the loop


def resolve_warps(settings: EvalSettings, data: ImageFolderData) -> int:
    """The number of warps per image: the setting, or 4 (0 on a zoom sweep, which carries its own)."""
    if settings.warps is not None:
        return settings.warps
    return 0 if data.zoom_sweep else DEFAULT_WARPS


def check_settings(settings: EvalSettings) -> None:
    """Reject impossible settings before any work (UsageError, exit 2)."""
    if settings.warps is not None and settings.warps < 0:
        raise UsageError(f"--warps must be 0 or more; got {settings.warps}")
    try:
        check_grid_rows(settings.grid, settings.rows)
    except ValueError as exc:
        raise UsageError(str(exc), "for example --grid 8 --rows 1") from None
    if settings.batch_size < 1:
        raise UsageError(f"--batch-size must be positive; got {settings.batch_size}")
    if settings.workers < 0:
        raise UsageError(f"--workers must be 0 or more; got {settings.workers}")
    if settings.limit is not None and settings.limit < 1:
        raise UsageError(f"--limit must be positive; got {settings.limit}")
    if settings.tta_scales:
        check_tta_scales(settings.tta_scales)


def check_thresholds_available(thresholds: Sequence[Threshold], *, warps: int, zoom_sweep: bool,
                                labels: bool = True) -> None:
    """A ``--fail-if`` on a metric this run cannot compute is a usage error, found before any work."""
    for t in thresholds:
        if t.metric in LABEL_METRICS and not labels:
            raise UsageError(f"--fail-if {t.expr!r}: {t.metric} needs labels but this run has none "
                             "(no class folders, or --no-labels)",
                             "gate on consistency, inv_error, zoom_consistency_min or flip_rate instead")
        if t.metric in ("warped_top1", "warped_top5", "inv_error", "sym_kl", "consistency", "canon_error") \
                and warps == 0:
            raise UsageError(f"--fail-if {t.expr!r}: {t.metric} needs random warps but --warps is 0",
                             "pass --warps K with K > 0"
                             + (", or use zoom_top1_min / zoom_consistency_min on a zoom sweep" if zoom_sweep else ""))
        if t.metric in ("zoom_top1_min", "zoom_consistency_min", "flip_rate") and not zoom_sweep:
            raise UsageError(f"--fail-if {t.expr!r}: {t.metric} needs a zoom-sweep tree (one with manifest.jsonl)",
                             "build one with 'dec warp --zoom'")


def evaluate(specs: Sequence[ModelSpec], data_dir: str | Path, settings: Optional[EvalSettings] = None, *,
             thresholds: Sequence[Threshold] = (), progress: Optional[ProgressFn] = None) -> Report:
    """Evaluate every model on the image folder and return the report (rank 0 and others alike)."""
    settings = settings or EvalSettings()
    check_settings(settings)
    if not specs:
        raise UsageError("no MODEL given", "pass a DEC checkpoint or a timm model name")
    dist_info = D.init_distributed(settings.device)
    data = scan_image_folder(data_dir, labels=False if settings.no_labels else None).limit(settings.limit)
    if not data.samples:  # every entry the scan found is bad
        first = data.unreadable[0]
        raise UsageError(f"none of the {len(data.unreadable)} entries in {data_dir} could be read "
                         f"(first: {first['path']}: {first['reason']})", "check the files and folder permissions")
    k = resolve_warps(settings, data)
    check_thresholds_available(thresholds, warps=k, zoom_sweep=data.zoom_sweep, labels=data.labels)
    zooms = [s.zoom for s in data.samples]
    sources = [s.source for s in data.samples]
    strength_max = max(1.0 / settings.scale_range[0], settings.scale_range[1])
    summarize_run = partial(summarize, zooms=zooms if data.zoom_sweep else None, sources=sources,
                            strength_max=strength_max, labels=data.labels)
    warp_cache: dict[str, Warp] = {}
    results: list[ModelResult] = []
    unreadable: dict[int, str] = {}
    for spec, name in zip(specs, display_names(specs)):
        torch.manual_seed(settings.seed)  # models without weights get a reproducible random init
        model = load_for_eval(spec, dist_info.device)
        info = _model_info(model, spec)
        mapping, how = class_to_output(data.classes, num_classes=int(info["num_classes"]),
                                       class_names=info.get("class_names"), class_map=settings.class_map,
                                       model_name=name) if data.labels else (None, None)
        cfg = data_config(model, settings.img_size)
        check_batch_fits(settings.batch_size, cfg["input_size"], dist_info.device, tensors=2 + k + EVAL_ACTIVATIONS)
        transform = eval_transform(model, settings.img_size)
        decs = _dec_modules(model, info)
        blocks = dec_blocks(model) if decs else []
        runner = torch.compile(model, mode="reduce-overhead" if dist_info.device.type == "cuda" else "default") \
            if settings.compile else model
        records, errors, timing = _run_model(runner, decs, data, mapping, transform, k, settings, dist_info,
                                             warp_cache, lambda done, total, _n=name: progress and progress(_n, done, total),
                                             blocks=[b for _, b in blocks])
        for idx, reason in errors:
            unreadable.setdefault(idx, reason)
        if len(unreadable) == len(data.samples):
            first = data.samples[min(unreadable)].rel
            raise UsageError(f"none of the {len(unreadable)} images in {data_dir} could be read "
                             f"(first: {first}: {unreadable[min(unreadable)]})",
                             "check the files are images Pillow can open")
        summary = summarize_run(records)
        canon_error, modules = summarize_dec(sort_records(records), [p for p, _ in blocks]) if blocks else (None, [])
        results.append(ModelResult(
            name=name, source=spec.source, model_name=str(info["model_name"]), dec=bool(info.get("dec")),
            num_classes=int(info["num_classes"]), class_mapping=how, input_size=list(cfg["input_size"]),
            metrics={**summary["metrics"], "canon_error": canon_error}, per_zoom=summary["per_zoom"],
            per_strength=summary["per_strength"], timing=timing, weights_conversion=info.get("weights_conversion"),
            dec_modules=modules,
        ))
        if settings.tta_scales:
            tta_name = f"{name}+tta"
            records, _, timing = _run_model(ScaleSearch(runner, settings.tta_scales), [], data, mapping, transform,
                                            k, settings, dist_info, warp_cache,
                                            lambda done, total: progress and progress(tta_name, done, total))
            summary = summarize_run(records)
            results.append(replace(results[-1], name=tta_name, metrics={**summary["metrics"], "canon_error": None},
                                   per_zoom=summary["per_zoom"], per_strength=summary["per_strength"], timing=timing,
                                   dec_modules=[]))
        del model, runner
    bad = [{"path": data.samples[i].rel, "reason": unreadable[i]} for i in sorted(unreadable)]
    found = len(data.samples) + len(data.unreadable)  # the scan's bad entries (FIFOs, locked folders) count too
    bad = sorted(bad + data.unreadable, key=lambda b: b["path"])
    report = Report(
        data={
            "root": str(data_dir), "labels": data.labels, "classes": len(data.classes), "images": found,
            "evaluated": found - len(bad), "unreadable": len(bad), "zoom_sweep": data.zoom_sweep,
            "zooms": data.zooms(),
        },
        settings={
            "warps": k, "scale_range": list(settings.scale_range), "grid": settings.grid, "rows": settings.rows,
            "seed": settings.seed, "img_size": settings.img_size, "limit": settings.limit, "amp": settings.amp,
            "tta_scales": list(settings.tta_scales) or None,
        },
        models=results,
        unreadable=bad,
    )
    for t in thresholds:
        if (t.metric.startswith("residual_") or t.metric == "canon_error") and not any(m.dec for m in results):
            raise UsageError(f"--fail-if {t.expr!r}: no model has DEC modules, so there is no {t.metric}",
                             "drop the rule or evaluate a DEC checkpoint (the rule applies to DEC models only)")
    report.fail_if = check_thresholds(report, thresholds)
    return report


def check_thresholds(report: Report, thresholds: Sequence[Threshold]) -> list[dict[str, Any]]:
    """Every (rule, model) pair with the measured value and whether the rule is violated."""
    rows = []
    for t in thresholds:
        for m in report.models:
            value = report.data["unreadable"] if t.metric == "unreadable" else m.metrics.get(t.metric)
            if value is None:
                continue
            rows.append({"expr": t.expr, "model": m.name, "metric": t.metric, "value": value,
                         "violated": t.violated(float(value))})
    return rows


def _forward(model: torch.nn.Module, x: torch.Tensor, amp: bool) -> torch.Tensor:
    dev = x.device.type
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    # A copy: under torch.compile's CUDA graphs the next call reuses the output buffer.
    return out.float().clone()


def _residuals(decs: Sequence[torch.nn.Module], batch: int) -> Optional[torch.Tensor]:
    """(batch, modules) solver residuals of the latest forward, or None if not available."""
    values = []
    for m in decs:
        r = getattr(m, "residual", None)
        if r is None:
            continue
        r = r.detach().float().reshape(-1).cpu()
        if r.numel() == 1:
            r = r.expand(batch)
        if r.numel() == batch:
            values.append(r)
    return torch.stack(values, dim=1) if values else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_model(model, decs, data: ImageFolderData, mapping, transform, k: int, settings: EvalSettings,
               dist_info: D.DistInfo, warp_cache: dict[str, Warp], progress: Callable[[int, int], Any],
               blocks: Sequence[torch.nn.Module] = ()):
    """Evaluate one model on this rank's shard; returns gathered records, unreadable files, timing.

    ``blocks``: the model's DEC blocks, whose canonicalization diagnostics are recorded per image.
    """
    device = dist_info.device
    dataset = ImageDataset(data.samples, transform, mapping)
    loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=D.eval_sampler(dataset),
                        num_workers=settings.workers, collate_fn=collate_skip,
                        pin_memory=device.type == "cuda")
    total = len(data.samples)
    done_local = 0
    parts: list[dict[str, np.ndarray]] = []
    errors: list[tuple[int, str]] = []
    times: list[tuple[float, int]] = []
    probe = Probe(blocks, k) if blocks else None
    with torch.inference_mode(), capture(blocks):
        for batch in loader:
            errors.extend(batch.errors)
            done_local += len(batch.indices) + len(batch.errors)
            if batch.images is None:
                progress(min(done_local * dist_info.world, total), total)
                continue
            x = batch.images.to(device, non_blocking=True)
            b = x.shape[0]
            _sync(device)
            t0 = time.perf_counter()
            clean = _forward(model, x, settings.amp)
            _sync(device)
            times.append((time.perf_counter() - t0, b))
            if probe:
                probe.clean()
            res = [_residuals(decs, b)] if decs else []
            warped = strength = None
            if k:
                rels = [data.samples[int(i)].rel for i in batch.indices]
                warps = batch_warps(rels, k, settings, warp_cache)
                strength = warp_strength(warps.slopes()).view(b, k)
                xw = apply_warp(x.repeat_interleave(k, dim=0), warps.to(device))
                chunks = []
                for start in range(0, b * k, settings.batch_size):
                    chunks.append(_forward(model, xw[start:start + settings.batch_size], settings.amp))
                    if probe:
                        probe.warped(start)
                    if decs:
                        r = _residuals(decs, chunks[-1].shape[0])
                        res.append(None if r is None else r)
                warped = torch.cat(chunks).view(b, k, -1)
            rec = batch_records(clean, batch.labels, warped, strength)
            rec["index"] = batch.indices.numpy().astype(np.int64)
            if probe:
                rec.update(probe.records())
            if decs and all(r is not None for r in res):
                clean_res = res[0]  # (b, M)
                per_image = [clean_res]
                if len(res) > 1:
                    w = torch.cat(res[1:]).view(b, k, -1).flatten(1)  # (b, K*M)
                    per_image.append(w)
                allr = torch.cat(per_image, dim=1).double()
                rec["res_mean"] = allr.mean(dim=1).numpy()
                rec["res_max"] = allr.amax(dim=1).numpy()
            parts.append(rec)
            progress(min(done_local * dist_info.world, total), total)
    local = concat_records(parts)
    gathered = D.all_gather_objects((local, errors))
    records = concat_records([g[0] for g in gathered])
    all_errors = sorted(e for g in gathered for e in g[1])
    # Latency: forward time per image, leaving out the first (warm-up) batch when there are others.
    timed = times[1:] if len(times) > 1 else times
    sums = D.all_reduce_sums({"seconds": sum(t for t, _ in timed), "images": float(sum(n for _, n in timed))})
    latency = 1000.0 * sums["seconds"] / sums["images"] if sums["images"] else None
    timing = {
        "latency_ms": latency,
        "images_per_s": (sums["images"] / sums["seconds"]) if sums["seconds"] > 0 else None,
        "device": str(device), "world_size": dist_info.world, "amp": settings.amp, "compile": settings.compile,
    }
    if not records:
        records = {"index": np.zeros(0, dtype=np.int64)}
    return records, all_errors, timing

