"""Applying a warp to images, feature maps and token sequences: one ``grid_sample`` per call.

Kept apart from `dec_cli.warps.warp` (the `Warp` type) so that the type does not
import its sampling grids (`dec_cli.warps.warpgrid`), which need the type.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dec_cli.warps.maps1d import DEFAULT_INVERSE_ITERS
from dec_cli.warps.warp import Warp
from dec_cli.warps.warpgrid import sampling_grid


def _sample(x: Tensor, grid: Tensor, mode: str) -> Tensor:
    """``grid_sample`` for float or integer NCHW tensors; integers keep their dtype."""
    if x.shape[0] != grid.shape[0]:
        if grid.shape[0] == 1:
            grid = grid.expand(x.shape[0], -1, -1, -1)
        elif x.shape[0] == 1:
            x = x.expand(grid.shape[0], -1, -1, -1)
        else:
            raise ValueError(f"batch of {x.shape[0]} inputs does not match {grid.shape[0]} warps")
    if x.is_floating_point():
        work = x
    else:
        work = x.to(torch.float32)
    out = F.grid_sample(work, grid.to(work.dtype), mode=mode, padding_mode="border", align_corners=False)
    if x.is_floating_point():
        return out
    info = torch.iinfo(x.dtype)
    return out.round_().clamp_(info.min, info.max).to(x.dtype)


def apply_warp(x: Tensor, warp: Warp, *, inverse: bool = False, mode: str = "bilinear",
               layout: str = "nchw", prefix_tokens: int = 0, grid_size: Sequence[int] | None = None,
               iters: int = DEFAULT_INVERSE_ITERS) -> Tensor:
    """Apply ``S(x; warp)`` (or ``S^{-1}`` with ``inverse=True``).

    ``layout`` is ``nchw`` (images, feature maps; a 3-D tensor is one image),
    ``nhwc`` (Swin-style features) or ``tokens`` (B, N, C): the first
    ``prefix_tokens`` (cls, distillation, register) pass through untouched and
    the rest are reshaped to ``grid_size`` (square if omitted). ``mode="nearest"``
    is for masks. Float, uint8 and uint16 inputs come back in their own dtype.
    """
    if layout == "nchw":
        if x.dim() == 3:
            return apply_warp(x.unsqueeze(0), warp, inverse=inverse, mode=mode, iters=iters).squeeze(0)
        if x.dim() != 4:
            raise ValueError(f"nchw input must be (B, C, H, W) or (C, H, W); got shape {tuple(x.shape)}")
        grid = sampling_grid(warp, x.shape[-2], x.shape[-1], inverse=inverse, iters=iters)
        return _sample(x, grid, mode)
    if layout == "nhwc":
        if x.dim() != 4:
            raise ValueError(f"nhwc input must be (B, H, W, C); got shape {tuple(x.shape)}")
        out = apply_warp(x.permute(0, 3, 1, 2), warp, inverse=inverse, mode=mode, iters=iters)
        return out.permute(0, 2, 3, 1)
    if layout == "tokens":
        if x.dim() != 3:
            raise ValueError(f"token input must be (B, N, C); got shape {tuple(x.shape)}")
        b, n, c = x.shape
        patches = n - prefix_tokens
        if grid_size is None:
            side = math.isqrt(patches)
            if side * side != patches:
                raise ValueError(f"{patches} patch tokens are not a square grid; pass grid_size=(h, w)")
            grid_size = (side, side)
        h, w = grid_size
        if h * w != patches:
            raise ValueError(f"grid_size {h}x{w} does not match {patches} patch tokens")
        maps = x[:, prefix_tokens:].transpose(1, 2).reshape(b, c, h, w)
        out = apply_warp(maps, warp, inverse=inverse, mode=mode, iters=iters)
        out = out.flatten(2).transpose(1, 2)
        if out.shape[0] != b:
            x = x.expand(out.shape[0], -1, -1)
        return torch.cat([x[:, :prefix_tokens], out], dim=1)
    raise ValueError(f"unknown layout {layout!r}; expected nchw, nhwc or tokens")
