"""Test-time scale search: the discrete input-canonicalization baseline of ``dec evaluate --tta-scales``.

Every preprocessed image is rescaled as a whole by each factor of a small set
about its centre and brought back to the model's input size (centre crop when
larger, edge-replicating pad when smaller), classified at every factor, and the
prediction with the highest softmax probability is kept. A single global
factor cannot undo *local* scale changes, which is what a DEC is for; this is
the baseline it has to beat.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# The factor list is parsed torch-free in dec_cli.evaluation.ttascales (bad input fails before torch loads).
from dec_cli.evaluation.ttascales import MAX_SCALE, check_tta_scales, parse_tta_scales  # noqa: E402,F401


def rescale(x: Tensor, factor: float) -> Tensor:
    """``x`` (B, C, H, W) magnified by ``factor`` about its centre, at its own size.

    The image is resized to ``round(factor * H) x round(factor * W)`` (bilinear,
    antialiased when shrinking), then centre-cropped, or padded by repeating its
    border pixels (no black frame in normalized space, no mirrored copies of
    objects). Factor 1 returns ``x`` itself.
    """
    h, w = x.shape[-2:]
    nh, nw = max(1, round(factor * h)), max(1, round(factor * w))
    if (nh, nw) == (h, w):
        return x
    y = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=factor < 1)
    if factor > 1:  # both sides grew (or stayed): centre crop
        top, left = (nh - h) // 2, (nw - w) // 2
        return y[..., top:top + h, left:left + w]
    top, left = (h - nh) // 2, (w - nw) // 2  # both sides shrank (or stayed): centred pad
    return F.pad(y, (left, w - nw - left, top, h - nh - top), mode="replicate")


class ScaleSearch(nn.Module):
    """A classifier that tries every factor of ``scales`` and keeps the most confident logits per image.

    The confidence is the highest softmax probability; ties go to the first
    factor listed. The output has the wrapped model's shape, so every metric
    of ``dec evaluate`` applies unchanged.
    """

    def __init__(self, model: nn.Module, scales: Sequence[float]):
        super().__init__()
        if not scales:
            raise ValueError("ScaleSearch needs at least one scale")
        self.model = model
        self.scales = tuple(float(s) for s in scales)

    def forward(self, x: Tensor) -> Tensor:
        best = best_conf = None
        for s in self.scales:
            out = self.model(rescale(x, s))
            logits = (out[0] if isinstance(out, (tuple, list)) else out).float()
            conf = logits.softmax(dim=-1).amax(dim=-1)
            if best is None:
                best, best_conf = logits, conf
            else:
                better = conf > best_conf
                best = torch.where(better.unsqueeze(-1), logits, best)
                best_conf = torch.where(better, conf, best_conf)
        return best
