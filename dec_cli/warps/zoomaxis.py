"""One axis of a local zoom that keeps its centre in place, and the largest radius that allows it.

The 1-D zoom has slope ``f`` over ``[c - r, c + r]`` and a compensating slope on
each side of it, chosen separately so that ``c`` maps to itself:
``a = (c - f r) / (c - r)`` on the left, ``b = (1 - c - f r) / (1 - c - r)`` on
the right. A single compensating slope (the zoom before this module) moves an
off-centre disc towards the image centre. Both side slopes must stay within
`SCALE_LIMITS` (what `dec unwarp` accepts); `fit_radius` gives the largest
radius for which they do, so a disc near a border shrinks instead of moving.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from dec_cli.warps.scalerange import SCALE_LIMITS

# Bounds are shrunk by this relative margin so a fitted radius passes the exact check again.
_MARGIN = 1e-9


def side_slopes(factor: float, c: float, rad: float) -> tuple[float, float]:
    """Compensating slopes (left, right) of the 1-D zoom about ``c``; inf where a side has no room."""
    left, right = c - rad, 1.0 - c - rad
    a = (c - factor * rad) / left if left > 0 else float("inf")
    b = (1.0 - c - factor * rad) / right if right > 0 else float("inf")
    return a, b


def _axis_bound(factor: float, c: float) -> float:
    """Largest radius (axis units) keeping both side slopes of a zoom about ``c`` within `SCALE_LIMITS`."""
    lo, hi = SCALE_LIMITS
    room = min(c, 1.0 - c)
    if factor > 1:
        bound = room * (1 - lo) / (factor - lo)
    elif factor < 1:
        bound = room * (hi - 1) / (hi - factor)
    else:
        bound = room
    return bound * (1 - _MARGIN)


def fit_radius(factors: Iterable[float], center: Sequence[float], radius: float, size: Sequence[int]) -> float:
    """``radius`` (a fraction of the short side of an image of ``size`` (H, W)) clamped so every factor's
    zoom about ``center`` (x, y) keeps its side slopes in range, the same radius on both axes (so the
    disc is magnified alike in x and y)."""
    h, w = size
    short = min(h, w)
    cx, cy = (float(v) for v in center)
    out = float(radius)
    for f in factors:
        out = min(out, _axis_bound(float(f), cx) * w / short, _axis_bound(float(f), cy) * h / short)
    return out


def zoom_1d(factor: float, c: float, rad: float, grid: int) -> tuple[Tensor, float]:
    """Knots (grid + 1) of the 1-D zoom about ``c`` (exact integrals of its slope per interval) and its
    smallest slope; `ValueError` when a side slope leaves `SCALE_LIMITS`."""
    lo_s, hi_s = SCALE_LIMITS
    a, b = side_slopes(factor, c, rad)
    if factor != 1 and not (lo_s <= a <= hi_s and lo_s <= b <= hi_s):
        raise ValueError(f"zoom factor {factor} with radius {rad:.4g} about {c:.4g} leaves no room outside the "
                         f"disc (side slopes {a:.3g}, {b:.3g} outside [{lo_s:g}, {hi_s:g}])")
    if factor == 1:
        a = b = 1.0
    lo, hi = c - rad, c + rad
    edges = torch.arange(grid + 1, dtype=torch.float64) / grid

    def integral(t: Tensor) -> Tensor:  # the 1-D zoom itself, evaluated exactly at ``t``
        left = a * t.clamp(max=lo)
        mid = factor * (t.clamp(lo, hi) - lo)
        right = b * (t.clamp(min=hi) - hi)
        return left + mid + right

    knots = integral(edges)
    knots[0], knots[-1] = 0.0, 1.0
    return knots, min(a, b, 1.0)
