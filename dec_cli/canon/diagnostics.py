"""Canonicalization diagnostics of DEC models in ``dec evaluate``: ``canon_error`` and ``residual_by_iter``.

For an image ``x`` and a random warp ``S`` of it, let ``F`` be the feature map
a DEC module receives and ``C`` the canonicalized map it hands to its block
(prefix tokens left out). The module's ``canon_error`` is
``sum ||C(x) - C(Sx)|| / sum ||F(x) - F(Sx)||``, L2 over each whole map, summed
over all (image, warp) pairs (a ratio of sums, so near-identity warps with a
tiny denominator cannot dominate): 1 means the DEC undoes nothing, 0 that both
land on the same canonical form. ``residual_by_iter`` is the size of the
solver's update after each iteration, averaged over images and their warped
copies, so convergence is visible. Capture is switched on only inside
:func:`capture`; the training forward never records anything.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from dec_cli.canon.retrofit import DECBlock


def dec_blocks(model: nn.Module) -> list[tuple[str, DECBlock]]:
    """``(path, DECBlock)`` of every retrofitted block, in module order."""
    return [(path, m) for path, m in model.named_modules() if isinstance(m, DECBlock)]


@contextmanager
def capture(blocks: Sequence[DECBlock]) -> Iterator[None]:
    """Within the block, every forward leaves its feature maps and per-iteration residuals on the modules."""
    for block in blocks:
        block.capture = block.dec.capture = True
    try:
        yield
    finally:
        for block in blocks:
            block.capture = block.dec.capture = False
            block.captured = block.dec.residual_by_iter = None


class Probe:
    """Per-image diagnostics of one batch, read from the captured modules after each forward.

    Call :meth:`clean` after the forward of the batch's ``b`` images, then
    :meth:`warped` after each forward of a slice of its ``b * k`` warped copies
    (image-major: rows ``i*k .. i*k+k-1`` are image ``i``), then :meth:`records`.
    """

    def __init__(self, blocks: Sequence[DECBlock], k: int):
        self.blocks = list(blocks)
        self.k = k
        self.maps: list[tuple[Tensor, Tensor]] = []
        self.res_sum: list[Tensor] = []
        self.num: list[Tensor] = []
        self.den: list[Tensor] = []

    def clean(self) -> None:
        # Copies: under CUDA graphs the next forward may reuse the captured buffers.
        self.maps = [(feat.clone(), canon.clone()) for feat, canon in (block.captured for block in self.blocks)]
        self.res_sum = [block.dec.residual_by_iter.double() for block in self.blocks]
        b = self.maps[0][0].shape[0] if self.maps else 0
        self.num = [torch.zeros(b * self.k, dtype=torch.float64, device=f.device) for f, _ in self.maps]
        self.den = [torch.zeros_like(n) for n in self.num]

    def warped(self, start: int) -> None:
        for m, block in enumerate(self.blocks):
            feat, canon = block.captured
            rows = torch.arange(start, start + feat.shape[0], device=feat.device)
            img = torch.div(rows, self.k, rounding_mode="floor")
            clean_feat, clean_canon = self.maps[m]
            self.num[m][rows] = (clean_canon[img] - canon).double().norm(dim=1)
            self.den[m][rows] = (clean_feat[img] - feat).double().norm(dim=1)
            self.res_sum[m].index_add_(0, img, block.dec.residual_by_iter.double())

    def records(self) -> dict[str, np.ndarray]:
        """Per-image arrays: ``res_iter.{m}`` (b, iters), and with warps ``canon_num.{m}``, ``canon_den.{m}`` (b, k)."""
        out = {}
        for m in range(len(self.blocks)):
            out[f"res_iter.{m}"] = (self.res_sum[m] / (1 + self.k)).cpu().numpy()
            if self.k:
                out[f"canon_num.{m}"] = self.num[m].view(-1, self.k).cpu().numpy()
                out[f"canon_den.{m}"] = self.den[m].view(-1, self.k).cpu().numpy()
        return out


def summarize_dec(rec: dict[str, np.ndarray], paths: Sequence[str]) -> tuple[Optional[float], list[dict[str, Any]]]:
    """(``canon_error`` averaged over modules, ``dec_modules`` rows) from records sorted by image index."""
    modules = []
    for m, path in enumerate(paths):
        res = rec.get(f"res_iter.{m}")
        num, den = rec.get(f"canon_num.{m}"), rec.get(f"canon_den.{m}")
        total = float(np.sum(den, dtype=np.float64)) if den is not None else 0.0
        modules.append({
            "path": path,
            "canon_error": float(np.sum(num, dtype=np.float64)) / total if total > 0 else None,
            "residual_by_iter": [float(v) for v in np.mean(res, axis=0, dtype=np.float64)]
            if res is not None and len(res) else None,
        })
    errors = [row["canon_error"] for row in modules if row["canon_error"] is not None]
    return (float(np.mean(errors)) if errors else None), modules


def module_rows(report: Any) -> tuple[list[str], list[list[str]]]:
    """Table rows (model, module, canon. error, residual after each iteration, relative residual of the last)
    for the DEC models of a report."""
    header = ["model", "DEC module", "canon. error", "residual by iteration", "residual rel."]
    rows = []
    for model in report.models:
        # residual_rel_by_dec names the DEC itself, the ``dec`` child of the block a dec_modules row names.
        rel = {row["path"]: row["residual_rel"] for row in getattr(model, "residual_rel_by_dec", None) or []}
        for row in model.dec_modules:
            err = "-" if row["canon_error"] is None else f"{row['canon_error']:.3f}"
            res = " ".join(f"{v:.3g}" for v in row["residual_by_iter"] or [])
            last = rel.get(f"{row['path']}.dec")
            rows.append([model.name, row["path"], err, res or "-", "-" if last is None else f"{last:.3g}"])
    return header, rows
