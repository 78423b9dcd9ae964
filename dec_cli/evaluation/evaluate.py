"""The evaluation loop: models x image folder -> a :class:`Report`.

Each image is classified clean and under K random monotone warps applied on
the fly to the preprocessed batch (``--zoom``: under a zoom sweep instead, `dec_cli.evaluation.evalzoom`). The warps of an image depend only on
``--seed`` and its relative path (never on batch size, worker count, world
size or ``--limit``), and every model sees the same warps. Under torchrun
each rank evaluates an unpadded shard; per-image records are gathered and
aggregated in image order, so the report equals the single-process one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from dec_cli.core import distributed as D
from dec_cli.backbones.checkpoint import load_model
from dec_cli.trees.data import (ImageDataset, ImageFolderData, class_to_output, collate_skip, data_config, eval_transform,
                          scan_image_folder)
from dec_cli.canon.diagnostics import Probe, capture, dec_blocks, summarize_dec
from dec_cli.evaluation.evalresiduals import ResidualLog, rel_decs, relative_summary
from dec_cli.evaluation.evalzoom import ZoomOptions, ZoomSweep, plan_sweep
from dec_cli.core.errors import UsageError
from dec_cli.core.limits import check_workers
from dec_cli.core.memory import EVAL_ACTIVATIONS, check_batch_fits
from dec_cli.evaluation.metrics import (LABEL_METRICS, Threshold, batch_records, concat_records, sort_records, summarize,
                             warp_strength)
from dec_cli.core.modelinfo import info_of, input_size
from dec_cli.evaluation.modelnames import default_names
from dec_cli.evaluation.predictions import model_rows, view_records
from dec_cli.evaluation.report import ModelResult, Report
from dec_cli.canon.retrofit import dec_modules
from dec_cli.evaluation.tta import ScaleSearch, check_tta_scales
from dec_cli.warps.randomwarp import check_grid_rows, image_key, keyed_warp
from dec_cli.warps.scalerange import DEFAULT_SCALE_RANGE, ScaleRange
from dec_cli.warps.warp import Warp
from dec_cli.warps.apply import apply_warp

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
    tta_scales: tuple[float, ...] = ()  # non-empty: also report NAME+tta (dec_cli.evaluation.tta.ScaleSearch)
    zoom: Optional[ZoomOptions] = None  # a zoom sweep applied on the fly (dec_cli.evaluation.evalzoom)
    predictions: bool = False  # keep every view's top-5 for --predictions (dec_cli.evaluation.predictions)

    def __post_init__(self) -> None:
        # A plain (lo, hi) pair from Python goes through ScaleRange's one check (ValueError if out of bounds).
        self.scale_range = ScaleRange.of(self.scale_range)


@dataclass
class ModelSpec:
    """A model to evaluate: a DEC checkpoint path or a timm name, plus its weights source."""

    source: str
    weights: Optional[str] = None
    pretrained: bool = False
    weights_source: str = "checkpoint"  # dec_cli.backbones.weightsource: checkpoint, pretrained, random-init or the FILE
    name: Optional[str] = None  # --name: the report's column (default: dec_cli.evaluation.modelnames.default_names)


# --------------------------------------------------------------------------- models


def load_for_eval(spec: ModelSpec, device: torch.device) -> torch.nn.Module:
    """Load a checkpoint or timm model (eval mode) through ``dec_cli.backbones.checkpoint.load_model``."""
    model = load_model(spec.source, weights=spec.weights, device=str(device), pretrained=spec.pretrained)
    return model.eval()


def display_names(specs: Sequence[ModelSpec]) -> list[str]:
    """Short, unique names for the report: ``--name``, else a checkpoint's file stem or the timm name."""
    defaults = default_names([s.source for s in specs])
    return [spec.name or default for spec, default in zip(specs, defaults)]


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


# --------------------------------------------------------------------------- checks before any work


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
        raise UsageError(f"--batch-size must be positive; got {settings.batch_size}", "for example --batch-size 64")
    check_workers(settings.workers)
    if settings.limit is not None and settings.limit < 1:
        raise UsageError(f"--limit must be positive; got {settings.limit}",
                         "drop --limit to evaluate every image, or pass --limit N with N >= 1")
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


def _check_dec_rules(thresholds: Sequence[Threshold], results: Sequence[ModelResult]) -> None:
    """``residual_*`` and ``canon_error`` rules need at least one DEC model (UsageError otherwise)."""
    for t in thresholds:
        if (t.metric.startswith("residual_") or t.metric == "canon_error") and not any(m.dec for m in results):
            raise UsageError(f"--fail-if {t.expr!r}: no model has DEC modules, so there is no {t.metric}",
                             "drop the rule or evaluate a DEC checkpoint (the rule applies to DEC models only)")


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


# --------------------------------------------------------------------------- the run


@dataclass
class _Run:
    """What every model of one evaluation shares: settings, data, device, warps (and their cache)."""

    settings: EvalSettings
    data: ImageFolderData
    data_dir: str | Path
    dist: D.DistInfo
    warps: int  # random warps per image
    progress: Optional[ProgressFn]
    sweep: Optional[ZoomSweep] = None  # --zoom: the sweep applied on the fly to every batch
    warp_cache: dict[str, Warp] = field(default_factory=dict)
    unreadable: dict[int, str] = field(default_factory=dict)  # sample index -> reason, over all models
    predictions: list[list[str]] = field(default_factory=list)  # --predictions CSV rows, all models

    def summarize(self, records: dict[str, np.ndarray]) -> dict[str, Any]:
        """Metrics, per-zoom and per-strength rows of one model's records."""
        samples, scale_range = self.data.samples, self.settings.scale_range
        return summarize(records, zooms=[s.zoom for s in samples] if self.data.zoom_sweep else None,
                         sources=[s.source for s in samples],
                         strength_max=max(1.0 / scale_range[0], scale_range[1]), labels=self.data.labels)

    def reporter(self, name: str) -> Callable[[int, int], Any]:
        """The progress callback of the row ``name``."""
        return lambda done, total: self.progress and self.progress(name, done, total)


@dataclass
class _Pass:
    """One model's pass over the data: what to call, its DEC modules and blocks, preprocessing, progress."""

    model: Callable[[torch.Tensor], Any]
    decs: Sequence[torch.nn.Module]
    mapping: Optional[Any]
    transform: Callable
    progress: Callable[[int, int], Any]
    blocks: Sequence[torch.nn.Module] = ()  # DEC blocks whose canonicalization diagnostics are recorded
    cfg: Optional[dict[str, Any]] = None  # the model's data config (where an on-the-fly zoom finds the crop)
    rel: Sequence[torch.nn.Module] = ()  # the DECs (of ``decs``) that measure residual_rel


def evaluate(specs: Sequence[ModelSpec], data_dir: str | Path, settings: Optional[EvalSettings] = None, *,
             thresholds: Sequence[Threshold] = (), progress: Optional[ProgressFn] = None) -> Report:
    """Evaluate every model on the image folder and return the report (rank 0 and others alike)."""
    settings = settings or EvalSettings()
    check_settings(settings)
    if not specs:
        raise UsageError("no MODEL given", "pass a DEC checkpoint or a timm model name")
    dist_info = D.init_distributed(settings.device)
    data = scan_image_folder(data_dir, labels=False if settings.no_labels else None).limit(settings.limit)
    data, sweep = plan_sweep(data, settings.zoom) if settings.zoom is not None else (data, None)
    if not data.samples:  # every entry the scan found is bad
        first = data.unreadable[0]
        raise UsageError(f"none of the {len(data.unreadable)} entries in {data_dir} could be read "
                         f"(first: {first['path']}: {first['reason']})", "check the files and folder permissions")
    k = resolve_warps(settings, data)
    check_thresholds_available(thresholds, warps=k, zoom_sweep=data.zoom_sweep, labels=data.labels)
    run = _Run(settings, data, data_dir, dist_info, k, progress, sweep)
    results: list[ModelResult] = []
    for spec, name in zip(specs, display_names(specs)):
        results.extend(_evaluate_model(run, spec, name))
    report = _report(run, results)
    _check_dec_rules(thresholds, results)
    report.fail_if = check_thresholds(report, thresholds)
    return report


def _evaluate_model(run: _Run, spec: ModelSpec, name: str) -> list[ModelResult]:
    """The row of one model, and its ``+tta`` row when ``--tta-scales`` asks for one."""
    settings, data = run.settings, run.data
    torch.manual_seed(settings.seed)  # models without weights get a reproducible random init
    model = load_for_eval(spec, run.dist.device)
    info = info_of(model)
    mapping, how = class_to_output(data.classes, num_classes=int(info.num_classes), class_names=info.class_names,
                                   class_map=settings.class_map, model_name=name) if data.labels else (None, None)
    size = input_size(model, settings.img_size)
    cfg = data_config(model, size)
    check_batch_fits(settings.batch_size, cfg["input_size"], run.dist.device,
                     tensors=2 + run.warps + EVAL_ACTIVATIONS)
    transform = eval_transform(model, size)
    decs = dec_modules(model) if info.dec else []
    blocks = dec_blocks(model) if decs else []
    rel = rel_decs(model, decs)
    runner = torch.compile(model, mode="reduce-overhead" if run.dist.device.type == "cuda" else "default") \
        if settings.compile else model
    records, errors, timing = _run_model(run, _Pass(runner, decs, mapping, transform, run.reporter(name),
                                                     [b for _, b in blocks], cfg, [m for _, m in rel]))
    _note_unreadable(run, errors)
    summary = run.summarize(records)
    run.predictions += model_rows(name, data, records, info, settings.class_map) if settings.predictions else []
    canon_error, modules = summarize_dec(sort_records(records), [p for p, _ in blocks]) if blocks else (None, [])
    residual_rel, rel_by_dec = relative_summary(sort_records(records), [p for p, _ in rel])
    result = ModelResult(
        name=name, source=spec.source, model_name=info.model_name, dec=info.dec,
        num_classes=int(info.num_classes), class_mapping=how, input_size=list(cfg["input_size"]),
        metrics={**summary["metrics"], "residual_rel": residual_rel, "canon_error": canon_error},
        per_zoom=summary["per_zoom"],
        per_strength=summary["per_strength"], timing=timing, weights_conversion=info.weights_conversion,
        dec_modules=modules, weights_source=spec.weights_source, residual_rel_by_dec=rel_by_dec,
    )
    if not settings.tta_scales:
        return [result]
    tta_name = f"{name}+tta"
    records, _, timing = _run_model(run, _Pass(ScaleSearch(runner, settings.tta_scales), [], mapping, transform,
                                               run.reporter(tta_name), cfg=cfg))
    summary = run.summarize(records)
    return [result, replace(result, name=tta_name, metrics={**summary["metrics"], "canon_error": None},
                            per_zoom=summary["per_zoom"], per_strength=summary["per_strength"], timing=timing,
                            dec_modules=[], residual_rel_by_dec=[])]


def _note_unreadable(run: _Run, errors: Sequence[tuple[int, str]]) -> None:
    """Remember the images a model could not read; when none could be read, stop (UsageError)."""
    for idx, reason in errors:
        run.unreadable.setdefault(idx, reason)
    if len(run.unreadable) == len(run.data.samples):
        first = min(run.unreadable)
        raise UsageError(f"none of the {len(run.unreadable)} images in {run.data_dir} could be read "
                         f"(first: {run.data.samples[first].rel}: {run.unreadable[first]})",
                         "check the files are images Pillow can open")


def _report(run: _Run, results: list[ModelResult]) -> Report:
    """The report of a finished run (``fail_if`` still empty)."""
    data, settings = run.data, run.settings
    bad = [{"path": data.samples[i].rel, "reason": run.unreadable[i]} for i in sorted(run.unreadable)]
    found = len(data.samples) + len(data.unreadable)  # the scan's bad entries (FIFOs, locked folders) count too
    bad = sorted(bad + data.unreadable, key=lambda b: b["path"])
    return Report(
        data={
            "root": str(run.data_dir), "labels": data.labels, "classes": len(data.classes), "images": found,
            "evaluated": found - len(bad), "unreadable": len(bad), "zoom_sweep": data.zoom_sweep,
            "zooms": data.zooms(),
        },
        settings={
            "warps": run.warps, "scale_range": list(settings.scale_range), "grid": settings.grid,
            "rows": settings.rows, "seed": settings.seed, "img_size": settings.img_size, "limit": settings.limit,
            "amp": settings.amp, "tta_scales": list(settings.tta_scales) or None,
            "zoom": None if settings.zoom is None else asdict(settings.zoom),
        },
        models=results,
        unreadable=bad,
        predictions=run.predictions,
    )


# --------------------------------------------------------------------------- one model's pass


def _forward(model: torch.nn.Module, x: torch.Tensor, amp: bool) -> torch.Tensor:
    dev = x.device.type
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    # A copy: under torch.compile's CUDA graphs the next call reuses the output buffer.
    return out.float().clone()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_model(run: _Run, job: _Pass) -> tuple[dict[str, np.ndarray], list[tuple[int, str]], dict[str, Any]]:
    """Evaluate one model on this rank's shard; returns gathered records, unreadable files, timing."""
    device, settings = run.dist.device, run.settings
    dataset = ImageDataset(run.data.samples, job.transform, job.mapping)
    loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=D.eval_sampler(dataset),
                        num_workers=settings.workers, collate_fn=collate_skip,
                        pin_memory=device.type == "cuda")
    total = len(run.data.samples)
    done_local = 0
    parts: list[dict[str, np.ndarray]] = []
    errors: list[tuple[int, str]] = []
    times: list[tuple[float, int]] = []
    probe = Probe(job.blocks, run.warps) if job.blocks else None
    with torch.inference_mode(), capture(job.blocks):
        for batch in loader:
            errors.extend(batch.errors)
            done_local += len(batch.indices) + len(batch.errors)
            if batch.images is not None:
                rec, seconds = _batch_records(run, job, probe, batch)
                parts.append(rec)
                times.append((seconds, len(rec["index"])))
            job.progress(min(done_local * run.dist.world, total), total)
    return _gather(run, parts, errors, times)


def _batch_records(run: _Run, job: _Pass, probe: Optional[Probe], batch: Any) -> tuple[dict[str, np.ndarray], float]:
    """The per-image records of one batch (clean and warped predictions, residuals, diagnostics) and
    the time of its clean forward."""
    settings, device, k = run.settings, run.dist.device, run.warps
    x = batch.images.to(device, non_blocking=True)
    if run.sweep is not None:
        x = run.sweep.apply(x, [run.data.samples[int(i)] for i in batch.indices], job.cfg)
    b = x.shape[0]
    _sync(device)
    t0 = time.perf_counter()
    clean = _forward(job.model, x, settings.amp)
    _sync(device)
    seconds = time.perf_counter() - t0
    if probe:
        probe.clean()
    log = ResidualLog(job.decs, job.rel)
    log.after(b)
    warped = strength = None
    if k:
        warps = batch_warps([run.data.samples[int(i)].rel for i in batch.indices], k, settings, run.warp_cache)
        strength = warp_strength(warps.slopes()).view(b, k)
        xw = apply_warp(x.repeat_interleave(k, dim=0), warps.to(device))
        chunks = []
        for start in range(0, b * k, settings.batch_size):
            chunks.append(_forward(job.model, xw[start:start + settings.batch_size], settings.amp))
            if probe:
                probe.warped(start)
            log.after(chunks[-1].shape[0])
        warped = torch.cat(chunks).view(b, k, -1)
    rec = batch_records(clean, batch.labels, warped, strength)
    rec["index"] = batch.indices.numpy().astype(np.int64)
    rec.update(view_records(clean, warped) if settings.predictions else {})
    if probe:
        rec.update(probe.records())
    rec.update(log.records(b, k))
    return rec, seconds


def _gather(run: _Run, parts: list[dict[str, np.ndarray]], errors: list[tuple[int, str]],
            times: list[tuple[float, int]]) -> tuple[dict[str, np.ndarray], list[tuple[int, str]], dict[str, Any]]:
    """All ranks' records and unreadable files, and the timing (forward seconds summed over ranks)."""
    gathered = D.all_gather_objects((concat_records(parts), errors))
    records = concat_records([g[0] for g in gathered])
    all_errors = sorted(e for g in gathered for e in g[1])
    # Latency: forward time per image, leaving out the first (warm-up) batch when there are others.
    timed = times[1:] if len(times) > 1 else times
    sums = D.all_reduce_sums({"seconds": sum(t for t, _ in timed), "images": float(sum(n for _, n in timed))})
    latency = 1000.0 * sums["seconds"] / sums["images"] if sums["images"] else None
    timing = {
        "latency_ms": latency,
        "images_per_s": (sums["images"] / sums["seconds"]) if sums["seconds"] > 0 else None,
        "device": str(run.dist.device), "world_size": run.dist.world, "amp": run.settings.amp,
        "compile": run.settings.compile,
    }
    if not records:
        records = {"index": np.zeros(0, dtype=np.int64)}
    return records, all_errors, timing
