"""Monotone (locally scaling) warps: parametrize, sample, apply, invert, compose, zoom.

A warp maps normalized coordinates ``[0, 1]^2`` onto themselves, one increasing
piecewise-linear map per axis (DESIGN section 1). ``l_X`` is stored as ``R``
control rows blended linearly in ``y``; ``l_Y`` as ``R`` control columns blended
linearly in ``x``. ``R = 1`` makes the warp separable. Each axis keeps its
breakpoints ``xs`` (shared by its rows) and values ``ys`` per row; warps built
from logits or knots use the uniform partition ``xs = i / G``.

Applying a warp follows ``S(I; l)(p) = I(l^{-1}(p))``: the sampling grid of
``S`` is the *inverse* map, and the grid of ``S^{-1}`` is the forward map.
This module depends on torch (and on numpy for the eager-CPU fast path of
separable grids, which builds them in fewer, cheaper passes).
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_SCALE_RANGE = (0.75, 1.33)
# Local scale factors (random warps and zooms) stay within these: beyond them a warp squeezes
# regions to nothing and cannot be inverted in practice.
SCALE_LIMITS = (0.05, 20.0)
# Largest --grid and --rows of random warps: 64 x 65 knots per axis keep a manifest line under 200 kB.
MAX_GRID = MAX_ROWS = 64
DEFAULT_INVERSE_ITERS = 16
_EPS = 1e-12


# --------------------------------------------------------------------------- 1-D helpers


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
    return torch.lerp(f0, f1, (x - x0) / (x1 - x0).clamp_min(_EPS))


def knots_from_logits(theta: Tensor) -> Tensor:
    """Knots ``0 = k_0 < ... < k_G = 1`` from logits (..., G): cumulative softmax.

    Non-finite logits (a NaN that reached a canonicalizer) count as 0, so the
    knots, and every sampling grid built from them, stay finite: torch's
    ``grid_sample`` backward crashes the process on a NaN grid.
    """
    inc = torch.softmax(torch.nan_to_num(theta, nan=0.0, posinf=0.0, neginf=0.0), dim=-1)
    knots = torch.cumsum(inc, dim=-1)
    zero = torch.zeros_like(knots[..., :1])
    knots = torch.cat([zero, knots], dim=-1)
    # Pin the end exactly at 1: the cumulative sum can drift by an ulp.
    return torch.cat([knots[..., :-1], torch.ones_like(zero)], dim=-1)


def uniform_partition(grid: int, *, device=None, dtype=torch.float32) -> Tensor:
    """The ``G + 1`` points ``i / G`` of the uniform partition of [0, 1]."""
    return torch.linspace(0.0, 1.0, grid + 1, device=device, dtype=dtype)


def _blend(values: Tensor, t: Tensor) -> Tensor:
    """Blend control-row values (B, R, K) linearly at positions ``t`` (B, M) -> (B, M, K)."""
    rows = values.shape[1]
    pos = t.clamp(0.0, 1.0) * (rows - 1)
    r0 = pos.floor().clamp_(max=rows - 2).long()
    frac = (pos - r0).unsqueeze(-1)
    k = values.shape[-1]
    lo = torch.gather(values, 1, r0.unsqueeze(-1).expand(-1, -1, k))
    hi = torch.gather(values, 1, (r0 + 1).unsqueeze(-1).expand(-1, -1, k))
    return lo + frac * (hi - lo)


# --------------------------------------------------------------------------- the warp


@dataclass(frozen=True)
class Warp:
    """A batch of 2-D monotone warps.

    ``xs_x`` (B, K) and ``ys_x`` (B, R, K) define ``l_X``: per control row an
    increasing map ``xs_x -> ys_x[r]``, rows blended linearly in ``y`` (row ``r``
    sits at ``y = r / (R - 1)``). ``xs_y`` and ``ys_y`` define ``l_Y`` likewise
    by control columns blended in ``x``.
    """

    xs_x: Tensor
    ys_x: Tensor
    xs_y: Tensor
    ys_y: Tensor

    # ----------------------------------------------------------------- builders

    @classmethod
    def from_knots(cls, knots_x: Tensor, knots_y: Tensor) -> "Warp":
        """Warp on the uniform partition from knots (B, R, G + 1) or (R, G + 1)."""
        if knots_x.dim() == 2:
            knots_x, knots_y = knots_x.unsqueeze(0), knots_y.unsqueeze(0)
        if knots_x.shape != knots_y.shape or knots_x.dim() != 3 or knots_x.shape[-1] < 2:
            raise ValueError(
                f"knots must both have shape (B, R, G+1); got {tuple(knots_x.shape)} and {tuple(knots_y.shape)}"
            )
        b, _, k = knots_x.shape
        xs = uniform_partition(k - 1, device=knots_x.device, dtype=knots_x.dtype).expand(b, k)
        return cls(xs, knots_x, xs, knots_y)

    @classmethod
    def from_logits(cls, theta_x: Tensor, theta_y: Tensor) -> "Warp":
        """Warp from logits (B, R, G) per axis; zero logits give the identity."""
        return cls.from_knots(knots_from_logits(theta_x), knots_from_logits(theta_y))

    @classmethod
    def identity(cls, batch: int = 1, grid: int = 8, rows: int = 1, *, device=None,
                 dtype=torch.float32) -> "Warp":
        """The identity warp."""
        theta = torch.zeros(batch, rows, grid, device=device, dtype=dtype)
        return cls.from_logits(theta, theta)

    # ----------------------------------------------------------------- properties

    @property
    def batch(self) -> int:
        return self.ys_x.shape[0]

    @property
    def rows(self) -> int:
        return self.ys_x.shape[1]

    @property
    def separable(self) -> bool:
        return self.rows == 1 and self.ys_y.shape[1] == 1

    @property
    def knots_x(self) -> Tensor:
        """Knot values of ``l_X`` (B, R, K)."""
        return self.ys_x

    @property
    def knots_y(self) -> Tensor:
        """Knot values of ``l_Y`` (B, R, K)."""
        return self.ys_y

    def slopes(self) -> tuple[Tensor, Tensor]:
        """Local scale factors per interval: ``(dl_X/dx, dl_Y/dy)``, each (B, R, K - 1)."""
        sx = torch.diff(self.ys_x, dim=-1) / torch.diff(self.xs_x, dim=-1).unsqueeze(1).clamp_min(_EPS)
        sy = torch.diff(self.ys_y, dim=-1) / torch.diff(self.xs_y, dim=-1).unsqueeze(1).clamp_min(_EPS)
        return sx, sy

    def to(self, *args, **kwargs) -> "Warp":
        return Warp(*(t.to(*args, **kwargs) for t in (self.xs_x, self.ys_x, self.xs_y, self.ys_y)))

    def __getitem__(self, index) -> "Warp":
        """Select warps from the batch (an int keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Warp(self.xs_x[index], self.ys_x[index], self.xs_y[index], self.ys_y[index])

    # ----------------------------------------------------------------- evaluation

    def _axis_map(self, xs: Tensor, ys: Tensor, u: Tensor, v: Tensor) -> Tensor:
        """Evaluate one axis map at along-axis ``u`` and across-axis ``v`` (B, M)."""
        if ys.shape[1] == 1:
            return interp(u, xs, ys[:, 0])
        values = _blend(ys, v)  # (B, M, K)
        xp = xs.unsqueeze(1).expand_as(values)
        return interp(u.unsqueeze(-1), xp, values).squeeze(-1)

    def _axis_inverse(self, xs: Tensor, ys: Tensor, p: Tensor, v: Tensor) -> Tensor:
        """Solve ``map(u, v) = p`` for ``u`` with ``v`` fixed (exact: searchsorted)."""
        if ys.shape[1] == 1:
            return interp(p, ys[:, 0], xs)
        values = _blend(ys, v)
        xp = xs.unsqueeze(1).expand_as(values)
        return interp(p.unsqueeze(-1), values, xp).squeeze(-1)

    def forward_points(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``l(x, y)`` at normalized points ``x, y`` of shape (B, M)."""
        x, y = self._broadcast(x), self._broadcast(y)
        return self._axis_map(self.xs_x, self.ys_x, x, y), self._axis_map(self.xs_y, self.ys_y, y, x)

    def inverse_points(self, px: Tensor, py: Tensor, iters: int = DEFAULT_INVERSE_ITERS) -> tuple[Tensor, Tensor]:
        """``l^{-1}(px, py)`` at normalized points (B, M).

        Separable warps invert exactly per axis. Otherwise alternate exact 1-D
        inversions (x given y, then y given x) a fixed number of times, so the
        computation never synchronizes with the host.
        """
        px, py = self._broadcast(px), self._broadcast(py)
        if self.separable:
            return interp(px, self.ys_x[:, 0], self.xs_x), interp(py, self.ys_y[:, 0], self.xs_y)
        x, y = px, py
        for _ in range(iters):
            x = self._axis_inverse(self.xs_x, self.ys_x, px, y)
            y = self._axis_inverse(self.xs_y, self.ys_y, py, x)
        return x, y

    def _broadcast(self, t: Tensor) -> Tensor:
        if t.dim() == 1:
            t = t.unsqueeze(0)
        return t.expand(self.batch, t.shape[-1]) if t.shape[0] == 1 else t

    # ----------------------------------------------------------------- group operations (separable)

    def inverse(self) -> "Warp":
        """The inverse warp as a warp (separable warps only: swap breakpoints and values)."""
        self._require_separable("inverse()")
        return Warp(self.ys_x[:, 0], self.xs_x.unsqueeze(1), self.ys_y[:, 0], self.xs_y.unsqueeze(1))

    def _require_separable(self, what: str) -> None:
        if not self.separable:
            raise ValueError(f"{what} is exact only for separable warps (rows=1); use inverse_points()")


def compose(outer: Warp, inner: Warp) -> Warp:
    """``outer o inner`` for separable warps, exactly: breakpoints of both, merged."""
    outer._require_separable("compose()")
    inner._require_separable("compose()")

    def axis(xs_o: Tensor, ys_o: Tensor, xs_i: Tensor, ys_i: Tensor) -> tuple[Tensor, Tensor]:
        b = max(xs_o.shape[0], xs_i.shape[0])
        xs_o, ys_o = xs_o.expand(b, -1), ys_o.expand(b, -1)
        xs_i, ys_i = xs_i.expand(b, -1), ys_i.expand(b, -1)
        # Breakpoints of the composite: inner's, plus where inner reaches outer's.
        pulled = interp(xs_o, ys_i, xs_i)
        xs, _ = torch.sort(torch.cat([xs_i, pulled], dim=-1), dim=-1)
        ys = interp(interp(xs, xs_i, ys_i), xs_o, ys_o)
        return xs, ys.unsqueeze(1)

    xs_x, ys_x = axis(outer.xs_x, outer.ys_x[:, 0], inner.xs_x, inner.ys_x[:, 0])
    xs_y, ys_y = axis(outer.xs_y, outer.ys_y[:, 0], inner.xs_y, inner.ys_y[:, 0])
    return Warp(xs_x, ys_x, xs_y, ys_y)


# --------------------------------------------------------------------------- sampling grids and application


def pixel_centres(n: int, *, device=None, dtype=torch.float32) -> Tensor:
    """Normalized coordinates of ``n`` pixel centres: ``(j + 0.5) / n``."""
    return (torch.arange(n, device=device, dtype=dtype) + 0.5) / n


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
    px = cx.expand(height, width).reshape(1, -1)
    py = cy[:, None].expand(height, width).reshape(1, -1)
    if inverse:
        gx, gy = warp.forward_points(px, py)
    else:
        gx, gy = warp.inverse_points(px, py, iters=iters)
    grid = torch.stack([gx, gy], dim=-1).view(b, height, width, 2)
    return grid.mul_(2.0).sub_(1.0) if not grid.requires_grad else grid * 2.0 - 1.0


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
        out[lo] = fp[0] + (x[lo] - xp[0]) * (fp[1] - fp[0]) / max(xp[1] - xp[0], _EPS)
    if x[-1] > xp[-1]:
        hi = x > xp[-1]
        out[hi] = fp[-1] + (x[hi] - xp[-1]) * (fp[-1] - fp[-2]) / max(xp[-1] - xp[-2], _EPS)
    return out


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


# --------------------------------------------------------------------------- random warps


def parse_scale_range(text: str) -> tuple[float, float]:
    """Parse ``"LO,HI"``; requires ``0 < LO <= 1 <= HI``."""
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"scale range must be LO,HI such as 0.75,1.33; got {text!r}") from None
    check_scale_range((lo, hi))
    return lo, hi


def check_scale_range(scale_range: Sequence[float]) -> None:
    """`ValueError` unless ``0 < LO <= 1 <= HI`` and both lie within `SCALE_LIMITS`."""
    lo, hi = scale_range
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= 1 <= hi):
        raise ValueError(f"scale range must satisfy 0 < LO <= 1 <= HI; got {lo},{hi}")
    if lo < SCALE_LIMITS[0] or hi > SCALE_LIMITS[1]:
        raise ValueError(f"scale range must lie within [{SCALE_LIMITS[0]:g}, {SCALE_LIMITS[1]:g}]; got {lo:g},{hi:g}")


def check_grid_rows(grid: int, rows: int) -> None:
    """`ValueError` unless ``1 <= grid <= MAX_GRID`` and ``1 <= rows <= MAX_ROWS`` (random warps)."""
    if not (1 <= grid <= MAX_GRID and 1 <= rows <= MAX_ROWS):
        raise ValueError(f"--grid must lie in 1..{MAX_GRID} and --rows in 1..{MAX_ROWS}; got {grid} and {rows}")


def key_seed(seed: int, key: str = "") -> int:
    """A 63-bit seed from a user seed and a key (a relative path, a copy index...)."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _slopes_np(u: np.ndarray, scale_range: Sequence[float]) -> np.ndarray:
    """Slopes log-uniform in ``[lo, hi]`` from uniform draws ``u`` (..., G), rescaled to mean 1 within the range.

    Mean 1 is what makes the knots end at 1; the rescaling moves slopes towards
    ``lo`` (if the mean is above 1) or ``hi`` (if below) proportionally, which
    keeps every slope inside the range. numpy float64: tiny arrays, numpy's per-op cost is lower.
    """
    lo, hi = scale_range
    check_scale_range(scale_range)
    s = np.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    mean = s.mean(axis=-1, keepdims=True)
    down = lo + (s - lo) * ((1 - lo) / np.maximum(mean - lo, _EPS))
    up = hi - (hi - s) * ((hi - 1) / np.maximum(hi - mean, _EPS))
    s = np.where(mean > 1, down, up)
    return s / s.mean(axis=-1, keepdims=True)  # remove rounding drift


def random_warp(batch: int = 1, *, grid: int = 8, rows: int = 1,
                scale_range: Sequence[float] = DEFAULT_SCALE_RANGE,
                generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> Warp:
    """Random monotone warps whose every local scale factor lies in ``scale_range``."""
    if grid < 1 or rows < 1:
        raise ValueError(f"grid and rows must be positive; got grid={grid}, rows={rows}")
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
    lam = (shear * lo / step.clamp_min(_EPS)).clamp(max=1.0)
    return mean + lam * (knots - mean)


def keyed_warp(seed: int, key: str = "", **kwargs) -> Warp:
    """A random warp that depends only on ``seed`` and ``key`` (never on order or workers)."""
    gen = torch.Generator().manual_seed(key_seed(seed, key))
    return random_warp(1, generator=gen, **kwargs)


# --------------------------------------------------------------------------- local zoom


def zoom_warp(factor: float, *, center: Sequence[float] = (0.5, 0.5), radius: float = 0.25,
              size: Sequence[int] = (1, 1), grid: int = 64, rows: int = 17,
              dtype=torch.float32) -> Warp:
    """Magnify (``factor > 1``) or shrink (``< 1``) a disc around ``center``.

    ``center`` is (x, y) in normalized coordinates, ``radius`` a fraction of the
    short side of an image of ``size`` (H, W). Each axis is a 1-D zoom ``z1(x)``
    (slope ``factor`` over ``[c - r, c + r]``, a constant compensating slope
    elsewhere) blended with the identity by a smooth weight of the across
    coordinate: ``l_X(x, y) = x + w(y) (z1(x) - x)``. ``w`` is 1 across the disc
    and falls off with a raised cosine whose width is the smallest (of a
    geometric ladder) that keeps the Jacobian determinant comfortably positive,
    so the zoom stays local for mild factors and never folds for strong ones.
    At the centre the local scale factor is exactly ``factor`` on both axes.
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
    zx, sx = _zoom_1d(factor, cx, rad_x, grid)
    zy, sy = _zoom_1d(factor, cy, rad_y, grid)
    ident = uniform_partition(grid, dtype=torch.float64)
    across = uniform_partition(rows - 1, dtype=torch.float64)
    # Smallest falloff keeping det >= half of what a separable zoom reaches at its worst.
    target = 0.5 * min(1.0, factor, sx) * min(1.0, factor, sy)
    # The warp is t + W(across) * D(along) per axis, so its Jacobian on a dense
    # grid comes from 1-D interpolations and outer products (fast, exact form).
    t = uniform_partition(128, dtype=torch.float64)
    dx = interp(t, ident, zx) - t
    dy = interp(t, ident, zy) - t
    for ramp in _ZOOM_RAMPS:
        wy = _falloff(across, cy, rad_y, ramp * rad_y)
        wx = _falloff(across, cx, rad_x, ramp * rad_x)
        lx = t[None, :] + interp(t, across, wy)[:, None] * dx[None, :]  # [y, x]
        ly = t[:, None] + interp(t, across, wx)[None, :] * dy[:, None]
        if float(_grid_jacobian(lx[None], ly[None], 1.0 / 128).min()) >= target:
            break
    kx = (ident + wy[:, None] * (zx - ident)).unsqueeze(0)
    ky = (ident + wx[:, None] * (zy - ident)).unsqueeze(0)
    kx[..., 0], kx[..., -1], ky[..., 0], ky[..., -1] = 0.0, 1.0, 0.0, 1.0
    return kx, ky


def _zoom_1d(factor: float, c: float, rad: float, grid: int) -> tuple[Tensor, Tensor]:
    """Knots (grid + 1) of the 1-D zoom about ``c`` and its compensating slope outside."""
    lo, hi = max(c - rad, 0.0), min(c + rad, 1.0)
    inside = hi - lo
    if inside * factor >= 1 or inside >= 1:
        raise ValueError(f"zoom factor {factor} with radius {rad:.3f} leaves no room outside the disc")
    outside = (1 - inside * factor) / (1 - inside)
    a = torch.arange(grid, dtype=torch.float64) / grid
    b = a + 1.0 / grid
    overlap = (torch.minimum(b, torch.tensor(hi, dtype=torch.float64))
               - torch.maximum(a, torch.tensor(lo, dtype=torch.float64))).clamp_min(0.0)
    inc = overlap * factor + (1.0 / grid - overlap) * outside
    knots = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(inc, dim=0)])
    knots[-1] = 1.0
    return knots, outside


def _falloff(t: Tensor, c: float, flat: float, ramp: float) -> Tensor:
    """1 within ``flat`` of ``c``, then a raised-cosine fall to 0 over ``ramp``."""
    u = ((t - c).abs() - flat).clamp(min=0.0) / ramp
    return 0.5 * (1.0 + torch.cos(math.pi * u.clamp(max=1.0)))


def jacobian_determinant(warp: Warp, n: int = 64) -> Tensor:
    """Finite-difference Jacobian determinant of ``l`` on an ``n x n`` grid (B, n-1, n-1)."""
    t = torch.linspace(0.0, 1.0, n, dtype=warp.ys_x.dtype, device=warp.ys_x.device)
    px = t.expand(n, n).reshape(1, -1)
    py = t[:, None].expand(n, n).reshape(1, -1)
    lx, ly = warp.forward_points(px, py)
    return _grid_jacobian(lx.view(-1, n, n), ly.view(-1, n, n), 1.0 / (n - 1))


def _grid_jacobian(lx: Tensor, ly: Tensor, step: float) -> Tensor:
    """Forward-difference Jacobian determinant of a map sampled on a square grid ``[..., y, x]``."""
    dxdx = (lx[:, :-1, 1:] - lx[:, :-1, :-1]) / step
    dydx = (ly[:, :-1, 1:] - ly[:, :-1, :-1]) / step
    dxdy = (lx[:, 1:, :-1] - lx[:, :-1, :-1]) / step
    dydy = (ly[:, 1:, :-1] - ly[:, :-1, :-1]) / step
    return dxdx * dydy - dxdy * dydx
