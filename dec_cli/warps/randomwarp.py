"""Random monotone warps, and the keys that make each image's warps reproducible.

`random_warp` draws warps whose every local scale factor lies in a `ScaleRange`;
`keyed_warp` draws them from a generator seeded by ``(seed, key)`` only, and
`image_key` is the one convention for an image's key in every command, so a
file's warps never depend on order, batch, rank or worker count.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from dec_cli.warps.maps1d import EPS
from dec_cli.warps.scalerange import DEFAULT_SCALE_RANGE, ScaleRange
from dec_cli.warps.warp import Warp

# Largest --grid and --rows of random warps: 64 x 65 knots per axis keep a manifest line under 200 kB.
MAX_GRID = MAX_ROWS = 64


def check_grid_rows(grid: int, rows: int) -> None:
    """`ValueError` unless ``1 <= grid <= MAX_GRID`` and ``1 <= rows <= MAX_ROWS`` (random warps)."""
    if not (1 <= grid <= MAX_GRID and 1 <= rows <= MAX_ROWS):
        raise ValueError(f"--grid must lie in 1..{MAX_GRID} and --rows in 1..{MAX_ROWS}; got {grid} and {rows}")


def key_seed(seed: int, key: str = "") -> int:
    """A 63-bit seed from a user seed and a key (an `image_key`, or a stream name such as ``"head"``).

    A file name read under a non-UTF-8 locale holds its undecodable bytes as surrogates;
    ``surrogateescape`` turns them back into those bytes, so the key (and the warp) is the same
    whatever the locale."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def image_key(rel: str, *, split: str | None = None, copy: int | None = None) -> str:
    """The key of one image's random warps: its posix path ``rel`` relative to the tree the command reads.

    Every command keys an image by that path, so its warps depend only on the
    seed and the file, never on order, batch, rank or worker count. The keys
    differ where the warps must:

    - `dec evaluate`: ``rel`` under ``--data``; the image's K warps are drawn in
      one go from this key.
    - `dec finetune` validation: ``split="val"`` gives ``"val/" + rel``:
      finetune names its images by split and path (as in its bad-file list),
      so its validation warps are not the ones `dec evaluate --data DATA/val`
      draws with the same seed.
    - `dec warp`: ``copy=i`` appends ``"\\0copy=i"`` (``i`` is 0 without
      ``--copies``): each copy of a file gets its own warp, and no file path can
      produce that key (paths hold no NUL).
    """
    key = rel if split is None else f"{split}/{rel}"
    return key if copy is None else f"{key}\0copy={copy}"


def _slopes_np(u: np.ndarray, scale_range: ScaleRange) -> np.ndarray:
    """Slopes log-uniform in ``[lo, hi]`` from uniform draws ``u`` (..., G), rescaled to mean 1 within the range.

    Mean 1 is what makes the knots end at 1; the rescaling moves slopes towards
    ``lo`` (if the mean is above 1) or ``hi`` (if below) proportionally, which
    keeps every slope inside the range. numpy float64: tiny arrays, numpy's per-op cost is lower.
    """
    lo, hi = scale_range
    s = np.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    mean = s.mean(axis=-1, keepdims=True)
    down = lo + (s - lo) * ((1 - lo) / np.maximum(mean - lo, EPS))
    up = hi - (hi - s) * ((hi - 1) / np.maximum(hi - mean, EPS))
    s = np.where(mean > 1, down, up)
    return s / s.mean(axis=-1, keepdims=True)  # remove rounding drift


def random_warp(batch: int = 1, *, grid: int = 8, rows: int = 1,
                scale_range: ScaleRange | Sequence[float] = DEFAULT_SCALE_RANGE,
                generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> Warp:
    """Random monotone warps whose every local scale factor lies in ``scale_range``.

    A plain ``(lo, hi)`` pair is taken through `ScaleRange` (`ScaleRangeError` if out of bounds).
    """
    if grid < 1 or rows < 1:
        raise ValueError(f"grid and rows must be positive; got grid={grid}, rows={rows}")
    scale_range = ScaleRange.of(scale_range)
    u = torch.rand(2, batch, rows, grid, generator=generator, dtype=torch.float64, device="cpu")
    knots = np.zeros((2, batch, rows, grid + 1))
    np.cumsum(_slopes_np(u.numpy(), scale_range) / grid, axis=-1, out=knots[..., 1:])
    knots[..., -1] = 1.0
    knots = torch.from_numpy(knots)
    if rows > 1:
        knots = _tame_rows(knots, min(scale_range))
    knots = knots.to(device=device, dtype=dtype)
    return Warp.from_knots(knots[0], knots[1])


def _tame_rows(knots: Tensor, lo: float, shear: float = 0.5) -> Tensor:
    """Pull control rows (..., R, K) towards their mean so the warp cannot fold.

    Independent random rows can differ so much between neighbours that the cross
    derivative ``dl_X/dy`` (rows apart times ``R - 1``) beats the slopes and the
    warp folds. Shrinking each row's deviation from the mean row by a common
    factor keeps every slope in range (convex blends of in-range rows) and
    bounds ``|dl_X/dy| <= shear * lo``, so ``det J >= (1 - shear^2) lo^2 > 0``
    and the alternating inversion contracts by about ``shear^2`` per sweep.
    """
    rows = knots.shape[-2]
    mean = knots.mean(dim=-2, keepdim=True)
    step = (knots[..., 1:, :] - knots[..., :-1, :]).abs().amax(dim=(-2, -1), keepdim=True) * (rows - 1)
    lam = (shear * lo / step.clamp_min(EPS)).clamp(max=1.0)
    return mean + lam * (knots - mean)


def keyed_warp(seed: int, key: str = "", batch: int = 1, **kwargs) -> Warp:
    """``batch`` random warps that depend only on ``seed`` and ``key`` (see `image_key`); ``kwargs`` as `random_warp`."""
    gen = torch.Generator().manual_seed(key_seed(seed, key))
    return random_warp(batch, generator=gen, **kwargs)
