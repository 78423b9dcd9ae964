"""Sampling grids: where each output pixel of a warped image reads its input.

`sampling_grid` turns a `Warp` into the ``grid_sample`` grid of ``S`` (read at
``l^{-1}(p)``) or of ``S^{-1}`` (read at ``l(p)``). Separable warps take two 1-D
interpolations written once into the grid; one separable warp on the CPU outside
autograd (what `dec warp` does per file) takes a numpy path, where torch's
per-operation overhead would cost more than the arithmetic. Non-separable grids
of ``S`` come from `dec_cli.warps.warpinverse`; one such warp on the CPU outside
autograd is cached by its knots (a fixed-centre zoom sweep reuses each grid for
every image of a size, and for its mask).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from dec_cli.warps.maps1d import DEFAULT_INVERSE_ITERS, EPS, interp, pixel_centres
from dec_cli.warps.warpinverse import grid_inverse

if TYPE_CHECKING:  # for annotations only: dec_cli.warps.warp imports this module to apply warps
    from dec_cli.warps.warp import Warp


@functools.lru_cache(maxsize=64)
def _centre_pair(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Pixel centres of both axes, padded to a common length: (2, max(H, W)); row 0 is x.

    Cached because building it costs as much as a few of the ops it feeds; callers
    never write into it.
    """
    n = max(height, width)
    out = torch.ones(2, n, dtype=torch.float64)
    out[0, :width] = pixel_centres(width, dtype=torch.float64)
    out[1, :height] = pixel_centres(height, dtype=torch.float64)
    return out.to(device=device, dtype=dtype)


def sampling_grid(warp: Warp, height: int, width: int, *, inverse: bool = False,
                  iters: int = DEFAULT_INVERSE_ITERS) -> Tensor:
    """The ``grid_sample`` grid (B, H, W, 2) that applies ``warp`` (or its inverse).

    Output pixel ``p`` of ``S(I; l)`` reads the input at ``l^{-1}(p)``; of
    ``S^{-1}`` at ``l(p)``. Coordinates follow ``align_corners=False``.
    """
    if warp.separable and warp.batch == 1 and _eager_cpu_no_grad(warp):
        return _separable_grid_numpy(warp, height, width, inverse=inverse)
    dev, dt = warp.ys_x.device, warp.ys_x.dtype
    b = warp.batch
    if warp.separable:
        # Both axes in one batched interpolation, mapped to [-1, 1] while still 1-D,
        # then written once into the 2-D grid (no broadcast-stack-rescale passes).
        centres = _centre_pair(height, width, dev, dt).expand(b, 2, -1)
        knots = torch.cat([warp.ys_x, warp.ys_y], dim=1)  # (B, 2, K): the rows of both axes
        parts = torch.stack([warp.xs_x, warp.xs_y], dim=1)
        if inverse:
            g = interp(centres, parts, knots * 2.0 - 1.0)
        else:
            g = interp(centres, knots, parts * 2.0 - 1.0)
        gx = g[:, None, 0, :width].expand(b, height, width)
        gy = g[:, 1, :height, None].expand(b, height, width)
        if _eager_cpu_no_grad(warp):
            # Eager CPU: interleaving via a complex view is one fused pass, faster than stack.
            return torch.view_as_real(torch.complex(gx, gy))
        return torch.stack([gx, gy], dim=-1)
    cx, cy = pixel_centres(width, device=dev, dtype=dt), pixel_centres(height, device=dev, dtype=dt)
    if inverse:
        px = cx.expand(height, width).reshape(1, -1)
        py = cy[:, None].expand(height, width).reshape(1, -1)
        gx, gy = warp.forward_points(px, py)
    elif _eager_cpu_no_grad(warp) and b == 1:
        return _cached_inverse_grid(warp, height, width, iters)
    else:
        gx, gy = grid_inverse(warp, cx.expand(b, width), cy.expand(b, height), iters)
    grid = torch.stack([gx, gy], dim=-1).view(b, height, width, 2)
    return grid.mul_(2.0).sub_(1.0) if not grid.requires_grad else grid * 2.0 - 1.0


# Inverse grids of single non-separable warps, keyed by their knots: a zoom sweep with a fixed centre
# applies the same few warps to every image of a size (and to its mask). Entries are never written to.
_GRID_CACHE: "OrderedDict[tuple, Tensor]" = OrderedDict()
GRID_CACHE_BYTES = 64 << 20


def _cached_inverse_grid(warp: Warp, height: int, width: int, iters: int) -> Tensor:
    """`sampling_grid` of ``S`` for one eager CPU warp, from a small least-recently-used cache."""
    parts = (warp.xs_x, warp.ys_x, warp.xs_y, warp.ys_y)
    key = (height, width, iters, str(warp.ys_x.dtype), tuple(t.shape for t in parts),
           b"".join(t.contiguous().numpy().tobytes() for t in parts))
    grid = _GRID_CACHE.get(key)
    if grid is not None:
        _GRID_CACHE.move_to_end(key)
        return grid
    cx = pixel_centres(width, dtype=warp.ys_x.dtype)[None]
    cy = pixel_centres(height, dtype=warp.ys_x.dtype)[None]
    gx, gy = grid_inverse(warp, cx, cy, iters)
    grid = torch.stack([gx, gy], dim=-1).view(1, height, width, 2).mul_(2.0).sub_(1.0)
    _GRID_CACHE[key] = grid
    while sum(g.numel() * g.element_size() for g in _GRID_CACHE.values()) > GRID_CACHE_BYTES and len(_GRID_CACHE) > 1:
        _GRID_CACHE.popitem(last=False)
    return grid


def _eager_cpu_no_grad(warp: Warp) -> bool:
    """Whether the grid may be built outside autograd and the compiler: eager CPU floats, no gradient."""
    parts = (warp.xs_x, warp.ys_x, warp.xs_y, warp.ys_y)
    return (warp.ys_x.device.type == "cpu" and warp.ys_x.dtype in (torch.float32, torch.float64)
            and not any(t.requires_grad for t in parts) and not torch.compiler.is_compiling())


def _separable_grid_numpy(warp: Warp, height: int, width: int, *, inverse: bool) -> Tensor:
    """The grid (1, H, W, 2) of one separable warp from two 1-D interpolations and one broadcast pass.

    For one warp at a time (the file warp path), where torch's per-op overhead
    costs more than the arithmetic; batches keep the batched torch path.

    A separable grid is an outer "sum" of one x row and one y column: with x as
    the real and y as the imaginary part of a complex number, a single broadcast
    add writes the interleaved (x, y) pairs. The 1-D maps are computed in float64.
    """
    cdtype = np.complex64 if warp.ys_x.dtype == torch.float32 else np.complex128
    # Index in numpy, not torch: a tensor view costs more than the arithmetic here.
    xs_x, ys_x = warp.xs_x.numpy()[0], warp.ys_x.numpy()[0, 0]  # np.interp works in float64 regardless
    xs_y, ys_y = warp.xs_y.numpy()[0], warp.ys_y.numpy()[0, 0]
    # Interpolating values already mapped to [-1, 1] saves two passes over the 1-D maps.
    if inverse:  # S^{-1} reads the input at l(p)
        gx = _interp_np(_centres_np(width), xs_x, ys_x * 2.0 - 1.0)
        gy = _interp_np(_centres_np(height), xs_y, ys_y * 2.0 - 1.0)
    else:  # S reads the input at l^{-1}(p)
        gx = _interp_np(_centres_np(width), ys_x, xs_x * 2.0 - 1.0)
        gy = _interp_np(_centres_np(height), ys_y, xs_y * 2.0 - 1.0)
    row = torch.from_numpy(gx.astype(cdtype))
    column = torch.from_numpy((gy * 1j).astype(cdtype))
    return torch.view_as_real(row[None, None, :] + column[None, :, None])


@functools.lru_cache(maxsize=64)
def _centres_np(n: int) -> np.ndarray:
    """Pixel centres ``(j + 0.5) / n`` in float64 (cached, read-only)."""
    out = (np.arange(n, dtype=np.float64) + 0.5) / n
    out.flags.writeable = False
    return out


def _interp_np(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """``np.interp`` of increasing ``x`` that extrapolates along the end segments, like `interp`."""
    out = np.interp(x, xp, fp)
    if x[0] < xp[0]:
        lo = x < xp[0]
        out[lo] = fp[0] + (x[lo] - xp[0]) * (fp[1] - fp[0]) / max(xp[1] - xp[0], EPS)
    if x[-1] > xp[-1]:
        hi = x > xp[-1]
        out[hi] = fp[-1] + (x[hi] - xp[-1]) * (fp[-1] - fp[-2]) / max(xp[-1] - xp[-2], EPS)
    return out
