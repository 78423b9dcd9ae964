"""Monotone (locally scaling) warps: the `Warp` type (knots, logits, points, inverse, compose) and `apply_warp`.

A warp maps normalized coordinates ``[0, 1]^2`` onto themselves, one increasing
piecewise-linear map per axis. ``l_X`` is stored as ``R`` control rows blended
linearly in ``y``; ``l_Y`` as ``R`` control columns blended linearly in ``x``.
``R = 1`` makes the warp separable. Each axis keeps its breakpoints ``xs``
(shared by its rows) and values ``ys`` per row; warps built from logits or knots
use the uniform partition ``xs = i / G``.

Applying a warp follows ``S(I; l)(p) = I(l^{-1}(p))``: the sampling grid of
``S`` is the *inverse* map, and the grid of ``S^{-1}`` is the forward map.
The other warp modules: `dec_cli.warps.maps1d` (1-D maps), `dec_cli.warps.warpgrid`
(sampling grids), `dec_cli.warps.randomwarp` (random warps and their per-image keys),
`dec_cli.warps.zoom` (local zooms) and `dec_cli.warps.scalerange` (the ``--scale-range`` type).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from dec_cli.warps.maps1d import DEFAULT_INVERSE_ITERS, EPS, blend_rows, interp, uniform_partition
from dec_cli.warps.warpinverse import points_inverse


# --------------------------------------------------------------------------- parameters


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
        sx = torch.diff(self.ys_x, dim=-1) / torch.diff(self.xs_x, dim=-1).unsqueeze(1).clamp_min(EPS)
        sy = torch.diff(self.ys_y, dim=-1) / torch.diff(self.xs_y, dim=-1).unsqueeze(1).clamp_min(EPS)
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
        values = blend_rows(ys, v)  # (B, M, K)
        xp = xs.unsqueeze(1).expand_as(values)
        return interp(u.unsqueeze(-1), xp, values).squeeze(-1)

    def forward_points(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``l(x, y)`` at normalized points ``x, y`` of shape (B, M)."""
        x, y = self._broadcast(x), self._broadcast(y)
        return self._axis_map(self.xs_x, self.ys_x, x, y), self._axis_map(self.xs_y, self.ys_y, y, x)

    def inverse_points(self, px: Tensor, py: Tensor, iters: int = DEFAULT_INVERSE_ITERS) -> tuple[Tensor, Tensor]:
        """``l^{-1}(px, py)`` at normalized points (B, M).

        Separable warps invert exactly per axis. Otherwise (`dec_cli.warps.warpinverse`)
        start from one sweep of exact 1-D inversions, refine with bounded Newton
        steps, and re-solve any point still off by more than
        `dec_cli.warps.warpinverse.TOLERANCE` with ``iters`` sweeps of alternating
        exact 1-D inversions (x given y, then y given x), the former method.
        """
        px, py = self._broadcast(px), self._broadcast(py)
        if self.separable:
            return interp(px, self.ys_x[:, 0], self.xs_x), interp(py, self.ys_y[:, 0], self.xs_y)
        return points_inverse(self, px, py, iters)

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


def jacobian_determinant(warp: Warp, n: int = 64) -> Tensor:
    """Finite-difference Jacobian determinant of ``l`` on an ``n x n`` grid (B, n-1, n-1)."""
    t = torch.linspace(0.0, 1.0, n, dtype=warp.ys_x.dtype, device=warp.ys_x.device)
    px = t.expand(n, n).reshape(1, -1)
    py = t[:, None].expand(n, n).reshape(1, -1)
    lx, ly = warp.forward_points(px, py)
    return grid_jacobian(lx.view(-1, n, n), ly.view(-1, n, n), 1.0 / (n - 1))


def grid_jacobian(lx: Tensor, ly: Tensor, step: float) -> Tensor:
    """Forward-difference Jacobian determinant of a map sampled on a square grid ``[..., y, x]``."""
    dxdx = (lx[:, :-1, 1:] - lx[:, :-1, :-1]) / step
    dydx = (ly[:, :-1, 1:] - ly[:, :-1, :-1]) / step
    dxdy = (lx[:, 1:, :-1] - lx[:, :-1, :-1]) / step
    dydy = (ly[:, 1:, :-1] - ly[:, :-1, :-1]) / step
    return dxdx * dydy - dxdy * dydx
