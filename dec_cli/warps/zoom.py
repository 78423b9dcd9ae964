"""Local zooms: magnify or shrink a disc of an image in place (`dec warp --zoom`, the zoom sweeps).

The zoom is a non-separable monotone warp (`dec_cli.warps.warp`) whose local scale
factor is exactly the zoom factor over the disc, which keeps the disc's centre
in place wherever it lies (`dec_cli.warps.zoomaxis`) and which never folds.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch import Tensor

from dec_cli.warps.maps1d import interp, uniform_partition
from dec_cli.warps.warp import Warp, grid_jacobian
from dec_cli.warps.zoomaxis import zoom_1d


def zoom_warp(factor: float, *, center: Sequence[float] = (0.5, 0.5), radius: float = 0.25,
              size: Sequence[int] = (1, 1), grid: int = 64, rows: int = 17,
              dtype=torch.float32) -> Warp:
    """Magnify (``factor > 1``) or shrink (``< 1``) a disc around ``center``.

    ``center`` is (x, y) in normalized coordinates, ``radius`` a fraction of the
    short side of an image of ``size`` (H, W). Each axis is a 1-D zoom ``z1(x)``
    (slope ``factor`` over ``[c - r, c + r]``, a compensating slope on each
    side chosen so that ``z1(c) = c``: `dec_cli.warps.zoomaxis`) blended with the
    identity by a smooth weight of the across coordinate:
    ``l_X(x, y) = x + w(y) (z1(x) - x)``. ``w`` is 1 across the disc (its
    control rows one row beyond, so the linear blend between rows is 1 there
    too) and falls off with a raised cosine whose width is the smallest (of a
    geometric ladder) that keeps the Jacobian determinant comfortably positive,
    so the zoom stays local for mild factors and never folds for strong ones.
    Over the square ``|x - cx| <= r, |y - cy| <= r`` the warp is exactly a
    scaling by ``factor`` about the centre. A radius whose side slopes would
    leave `SCALE_LIMITS` raises `ValueError` (`dec_cli.warps.zoomaxis.fit_radius`
    gives the largest that fits).
    """
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"zoom factor must be positive; got {factor}")
    if not 0 < radius <= 0.5:
        raise ValueError(f"zoom radius must be in (0, 0.5]; got {radius}")
    if grid < 2 or rows < 2:
        raise ValueError(f"zoom needs grid >= 2 and rows >= 2; got grid={grid}, rows={rows}")
    cx, cy = (float(v) for v in center)
    if not (0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0):
        raise ValueError(f"zoom centre must lie in [0, 1]^2; got {cx},{cy}")
    h, w = size
    short = min(h, w)
    rad_x, rad_y = radius * short / w, radius * short / h
    knots_x, knots_y = _zoom_knots(float(factor), cx, cy, rad_x, rad_y, int(grid), int(rows))
    return Warp.from_knots(knots_x.to(dtype, copy=True), knots_y.to(dtype, copy=True))


_ZOOM_RAMPS = tuple(0.25 * 1.3 ** i for i in range(20))  # falloff widths, in disc radii


@functools.lru_cache(maxsize=256)
def _zoom_knots(factor: float, cx: float, cy: float, rad_x: float, rad_y: float,
                grid: int, rows: int) -> tuple[Tensor, Tensor]:
    """Knots (1, rows, grid + 1) of both axes; cached (a sweep reuses them per image size)."""
    zx, sx = zoom_1d(factor, cx, rad_x, grid)
    zy, sy = zoom_1d(factor, cy, rad_y, grid)
    ident = uniform_partition(grid, dtype=torch.float64)
    across = uniform_partition(rows - 1, dtype=torch.float64)
    pad = 1.0 / (rows - 1)  # one control row beyond the disc: the blend between rows stays 1 over it
    # Smallest falloff keeping det >= half of what a separable zoom reaches at its worst.
    target = 0.5 * min(1.0, factor, sx) * min(1.0, factor, sy)
    # The warp is t + W(across) * D(along) per axis, so its Jacobian on a dense
    # grid comes from 1-D interpolations and outer products (fast, exact form).
    t = uniform_partition(128, dtype=torch.float64)
    dx = interp(t, ident, zx) - t
    dy = interp(t, ident, zy) - t
    for ramp in _ZOOM_RAMPS:
        wy = _falloff(across, cy, rad_y + pad, ramp * rad_y)
        wx = _falloff(across, cx, rad_x + pad, ramp * rad_x)
        lx = t[None, :] + interp(t, across, wy)[:, None] * dx[None, :]  # [y, x]
        ly = t[:, None] + interp(t, across, wx)[None, :] * dy[:, None]
        if float(grid_jacobian(lx[None], ly[None], 1.0 / 128).min()) >= target:
            break
    kx = (ident + wy[:, None] * (zx - ident)).unsqueeze(0)
    ky = (ident + wx[:, None] * (zy - ident)).unsqueeze(0)
    kx[..., 0], kx[..., -1], ky[..., 0], ky[..., -1] = 0.0, 1.0, 0.0, 1.0
    return kx, ky


def _falloff(t: Tensor, c: float, flat: float, ramp: float) -> Tensor:
    """1 within ``flat`` of ``c``, then a raised-cosine fall to 0 over ``ramp``."""
    u = ((t - c).abs() - flat).clamp(min=0.0) / ramp
    return 0.5 * (1.0 + torch.cos(math.pi * u.clamp(max=1.0)))
