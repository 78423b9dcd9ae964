"""Increasing piecewise-linear maps of ``[0, 1]`` in one dimension, the building block of every warp.

`interp` evaluates (and, with breakpoints and values swapped, inverts) such a map
for a batch at once; `uniform_partition` and `pixel_centres` are the points warps
are defined on and sampled at. See `dec_cli.warps.warp` for how two of them make a 2-D warp.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-12
# Sweeps of alternating exact 1-D inversions that invert a non-separable warp (see Warp.inverse_points).
DEFAULT_INVERSE_ITERS = 16


def interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Batched piecewise-linear interpolation of ``x`` (..., M) on increasing ``xp`` (..., K).

    Points outside ``[xp[0], xp[-1]]`` are extrapolated along the end segments,
    which keeps maps of ``[0, 1]`` onto itself exact at the borders.
    """
    k = xp.shape[-1]
    idx = torch.searchsorted(xp.contiguous(), x.contiguous(), right=True).clamp(1, k - 1)
    x0 = torch.gather(xp, -1, idx - 1)
    x1 = torch.gather(xp, -1, idx)
    f0 = torch.gather(fp, -1, idx - 1)
    f1 = torch.gather(fp, -1, idx)
    return torch.lerp(f0, f1, (x - x0) / (x1 - x0).clamp_min(EPS))


def uniform_partition(grid: int, *, device=None, dtype=torch.float32) -> Tensor:
    """The ``G + 1`` points ``i / G`` of the uniform partition of [0, 1]."""
    return torch.linspace(0.0, 1.0, grid + 1, device=device, dtype=dtype)


def pixel_centres(n: int, *, device=None, dtype=torch.float32) -> Tensor:
    """Normalized coordinates of ``n`` pixel centres: ``(j + 0.5) / n``."""
    return (torch.arange(n, device=device, dtype=dtype) + 0.5) / n


def blend_rows(values: Tensor, t: Tensor) -> Tensor:
    """Blend control-row values (B, R, K) linearly at positions ``t`` (B, M) -> (B, M, K); one row is held constant."""
    if values.shape[1] == 1:
        return values.expand(-1, t.shape[1], -1)
    rows = values.shape[1]
    pos = t.clamp(0.0, 1.0) * (rows - 1)
    r0 = pos.floor().clamp_(max=rows - 2).long()
    frac = (pos - r0).unsqueeze(-1)
    k = values.shape[-1]
    lo = torch.gather(values, 1, r0.unsqueeze(-1).expand(-1, -1, k))
    hi = torch.gather(values, 1, (r0 + 1).unsqueeze(-1).expand(-1, -1, k))
    return lo + frac * (hi - lo)
