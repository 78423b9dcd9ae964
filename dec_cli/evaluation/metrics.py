"""Accuracy and local-scale consistency metrics, per image and aggregated, plus ``--fail-if`` rules.

Per batch, :func:`batch_records` turns clean logits (B, C) and warped logits
(B, K, C) into per-image numbers; :func:`summarize` aggregates the records of a
whole dataset (sorted by image index, so the result does not depend on batch
size or world size). Definitions (README "Metrics"):

- top-k: the label is among the k highest logits (k = min(5, C) for top-5);
- invariance error: mean over images and warps of ``||softmax f(x) - softmax f(Sx)||_2``;
- symmetric KL: mean of ``(KL(p||q) + KL(q||p)) / 2`` with ``p = softmax f(x)``, ``q = softmax f(Sx)``;
- consistency: fraction of (image, warp) pairs whose top-1 class does not change;
- zoom sweeps: top-1 per zoom factor, and consistency of each image's top-1
  with that of the zoom-1.0 image made from the same source;
- flip rate: ImageNet-P's flip probability (Hendrycks & Dietterich 2019) over
  zoom sweeps, the fraction of adjacent zoom factors (sorted, per source
  image) between which the top-1 class changes.

Without labels (``labels=False``) every accuracy is null; the agreement
metrics only compare the model with itself and are computed as usual.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor


STRENGTH_BINS = 4
ZOOM_IDENTITY = 1.0
# Metrics that compare predictions with labels: null in a label-free run.
LABEL_METRICS = ("top1", "top5", "warped_top1", "warped_top5", "zoom_top1_min")


# --------------------------------------------------------------------------- per-batch tensors


def topk_hits(logits: Tensor, targets: Tensor, k: int) -> Tensor:
    """Bool (...,): whether ``targets`` is among the ``min(k, C)`` largest logits (last dim)."""
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    return (top == targets.unsqueeze(-1)).any(dim=-1)


def prob_l2(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """``||softmax(a) - softmax(b)||_2`` over the last dim (float64)."""
    p = torch.softmax(logits_a.double(), dim=-1)
    q = torch.softmax(logits_b.double(), dim=-1)
    return torch.linalg.vector_norm(p - q, dim=-1)


def symmetric_kl(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """``(KL(p||q) + KL(q||p)) / 2`` over the last dim (float64, from log-softmax for stability)."""
    lp = torch.log_softmax(logits_a.double(), dim=-1)
    lq = torch.log_softmax(logits_b.double(), dim=-1)
    diff = lp - lq
    return 0.5 * ((lp.exp() - lq.exp()) * diff).sum(dim=-1)


def warp_strength(slopes: Sequence[Tensor]) -> Tensor:
    """Strength of each warp (B,): ``exp(RMS of log slope)`` over all intervals of both axes.

    1 is the identity; it never exceeds the widest factor of the scale range.
    """
    logs = torch.cat([s.double().log().flatten(1) for s in slopes], dim=1)
    return logs.pow(2).mean(dim=1).sqrt().exp()


def batch_records(clean: Tensor, targets: Tensor, warped: Optional[Tensor] = None,
                  strength: Optional[Tensor] = None) -> dict[str, np.ndarray]:
    """Per-image numbers for one batch.

    ``clean`` (B, C) logits, ``targets`` (B,) output indices, ``warped``
    (B, K, C) logits of the K warped copies, ``strength`` (B, K).
    """
    clean = clean.detach().float().cpu()
    targets = targets.cpu()
    rec = {
        "target": targets.numpy().astype(np.int64),
        "pred": clean.argmax(dim=-1).numpy().astype(np.int64),
        "hit1": topk_hits(clean, targets, 1).numpy(),
        "hit5": topk_hits(clean, targets, 5).numpy(),
    }
    if warped is not None and warped.shape[1] > 0:
        warped = warped.detach().float().cpu()
        ref = clean.unsqueeze(1).expand_as(warped)
        tgt = targets.unsqueeze(1).expand(warped.shape[:2])
        wpred = warped.argmax(dim=-1)
        rec.update({
            "wpred": wpred.numpy().astype(np.int64),
            "whit1": topk_hits(warped, tgt, 1).numpy(),
            "whit5": topk_hits(warped, tgt, 5).numpy(),
            "l2": prob_l2(ref, warped).numpy(),
            "skl": symmetric_kl(ref, warped).numpy(),
            "consistent": (wpred == clean.argmax(dim=-1, keepdim=True)).numpy(),
        })
        if strength is not None:
            rec["strength"] = strength.detach().double().cpu().numpy().reshape(warped.shape[:2])
    return rec


def concat_records(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate per-batch records along images (keys present in every part)."""
    parts = [p for p in parts if p and len(p.get("index", ())) > 0]
    if not parts:
        return {}
    keys = set(parts[0])
    for p in parts[1:]:
        keys &= set(p)
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in sorted(keys)}


def sort_records(rec: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Records in increasing image index (so sums are summed in one fixed order)."""
    if not rec:
        return rec
    order = np.argsort(rec["index"], kind="stable")
    return {k: v[order] for k, v in rec.items()}


# --------------------------------------------------------------------------- aggregation


def _mean(values: np.ndarray) -> Optional[float]:
    return float(np.mean(values, dtype=np.float64)) if values.size else None


def summarize(rec: dict[str, np.ndarray], *, zooms: Optional[Sequence[Optional[float]]] = None,
              sources: Optional[Sequence[Optional[str]]] = None,
              strength_max: Optional[float] = None, labels: bool = True) -> dict[str, Any]:
    """Aggregate sorted records into ``metrics``, ``per_zoom`` and ``per_strength``.

    ``zooms``/``sources`` are indexed by image index (None where not a zoom
    output). ``strength_max`` is the top of the strength bins (the scale range's
    widest factor, ``max(1/lo, hi)``). ``labels=False`` nulls every accuracy
    (the records' targets mean nothing then).
    """
    rec = sort_records(rec)
    n = int(rec["index"].size) if rec else 0
    metrics: dict[str, Any] = {
        "images": n,
        "top1": _mean(rec["hit1"]) if n else None,
        "top5": _mean(rec["hit5"]) if n else None,
        "pairs": 0,
        "warped_top1": None, "warped_top5": None,
        "inv_error": None, "sym_kl": None, "consistency": None,
        "zoom_top1_min": None, "zoom_consistency_min": None, "flip_rate": None,
        "residual_mean": None, "residual_max": None, "residual_rel": None,  # residual_rel: evalresiduals
    }
    if n and "wpred" in rec:
        metrics.update({
            "pairs": int(rec["wpred"].size),
            "warped_top1": _mean(rec["whit1"]),
            "warped_top5": _mean(rec["whit5"]),
            "inv_error": _mean(rec["l2"]),
            "sym_kl": _mean(rec["skl"]),
            "consistency": _mean(rec["consistent"]),
        })
    if n and "res_mean" in rec:
        metrics["residual_mean"] = _mean(rec["res_mean"])
        metrics["residual_max"] = float(np.max(rec["res_max"]))
    per_zoom = zoom_table(rec, zooms, sources) if (n and zooms is not None) else []
    if per_zoom:
        metrics["zoom_top1_min"] = min(row["top1"] for row in per_zoom)
        cons = [row["consistency"] for row in per_zoom if row["consistency"] is not None]
        metrics["zoom_consistency_min"] = min(cons) if cons else None
        metrics["flip_rate"] = flip_rate(rec, zooms, sources)
    per_strength = strength_table(rec, strength_max) if (n and "strength" in rec) else []
    if not labels:
        metrics.update(dict.fromkeys(LABEL_METRICS))
        for row in per_zoom:
            row.update(top1=None, top5=None)
        for row in per_strength:
            row["top1"] = None
    return {"metrics": metrics, "per_zoom": per_zoom, "per_strength": per_strength}


def zoom_table(rec: dict[str, np.ndarray], zooms: Sequence[Optional[float]],
               sources: Sequence[Optional[str]]) -> list[dict[str, Any]]:
    """Per zoom factor: images, top-1, top-5, and consistency with the zoom-1.0 image of the same source."""
    idx = rec["index"]
    img_zoom = np.array([zooms[i] if zooms[i] is not None else np.nan for i in idx], dtype=np.float64)
    img_src = [sources[i] for i in idx]
    ref_pred: dict[str, int] = {}
    for j, z in enumerate(img_zoom):
        if z == ZOOM_IDENTITY and img_src[j] is not None:
            ref_pred.setdefault(img_src[j], int(rec["pred"][j]))
    rows = []
    for z in sorted({float(z) for z in img_zoom if not math.isnan(z)}):
        sel = np.nonzero(img_zoom == z)[0]
        agree = [int(rec["pred"][j]) == ref_pred[img_src[j]] for j in sel if img_src[j] in ref_pred]
        rows.append({
            "zoom": z,
            "images": int(sel.size),
            "top1": _mean(rec["hit1"][sel]),
            "top5": _mean(rec["hit5"][sel]),
            "consistency": _mean(np.array(agree, dtype=bool)) if agree else None,
            "groups": len(agree),
        })
    return rows


def flip_rate(rec: dict[str, np.ndarray], zooms: Sequence[Optional[float]],
              sources: Sequence[Optional[str]]) -> Optional[float]:
    """The probability that top-1 changes between adjacent zoom factors (None without such pairs).

    ImageNet-P's flip probability (Hendrycks & Dietterich 2019): the outputs of
    each source image, sorted by zoom factor, form a sequence; the flips over
    all adjacent pairs of all sequences divided by the number of pairs.
    """
    sequences: dict[str, list[tuple[float, int]]] = {}
    for j, i in enumerate(rec["index"]):
        if zooms[i] is not None and sources[i] is not None:
            sequences.setdefault(sources[i], []).append((float(zooms[i]), int(rec["pred"][j])))
    flips = pairs = 0
    for seq in sequences.values():
        preds = [pred for _, pred in sorted(seq)]
        flips += sum(a != b for a, b in zip(preds, preds[1:]))
        pairs += len(preds) - 1
    return flips / pairs if pairs else None


def strength_edges(strength_max: float, bins: int = STRENGTH_BINS) -> list[float]:
    """Bin edges (as scale factors) equally spaced in log-strength from 1 to ``strength_max``."""
    top = math.log(max(strength_max, 1.0 + 1e-9))
    return [math.exp(top * i / bins) for i in range(bins + 1)]


def strength_table(rec: dict[str, np.ndarray], strength_max: Optional[float]) -> list[dict[str, Any]]:
    """Warped top-1 and consistency per bin of warp strength (see :func:`warp_strength`)."""
    strength = rec["strength"].reshape(-1)
    if strength_max is None:
        strength_max = float(strength.max()) if strength.size else 1.0
    edges = strength_edges(strength_max)
    hit = rec["whit1"].reshape(-1)
    cons = rec["consistent"].reshape(-1)
    # Bin on log-strength so the bins are those of strength_edges; clip the top into the last bin.
    pos = np.log(np.maximum(strength, 1.0)) / max(math.log(edges[-1]), 1e-12) * (len(edges) - 1)
    which = np.clip(np.floor(pos + 1e-9).astype(np.int64), 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        sel = which == b
        count = int(sel.sum())
        rows.append({
            "strength_lo": edges[b], "strength_hi": edges[b + 1], "pairs": count,
            "top1": _mean(hit[sel]) if count else None,
            "consistency": _mean(cons[sel]) if count else None,
        })
    return rows


# --------------------------------------------------------------------------- --fail-if


# Parsed torch-free in dec_cli.evaluation.failif (a bad rule fails before torch loads); re-exported here.
from dec_cli.evaluation.failif import FAIL_METRICS, Threshold, parse_fail_if  # noqa: E402,F401
