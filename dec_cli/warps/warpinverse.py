"""Fast inverse of a non-separable warp: a per-line exact start, then vectorised Newton steps.

`Warp.inverse_points` used to alternate exact 1-D inversions (x given y, then y
given x) sixteen times, each inversion materialising every knot of a blended
row for every point: 95 % of a `dec warp --zoom` output's time. Here:

1. Start (`line_start`) from the exact inverse of each axis with the *across*
   coordinate held at the target's, ``x0 = l_X(., py)^{-1}(px)`` and
   ``y0 = l_Y(., px)^{-1}(py)``: one batched 1-D interpolation per axis. On a
   sampling grid every pixel row shares ``py`` (every column ``px``), so the
   blended rows are built once per image line, not once per pixel.
2. Refine with Newton steps (`newton_steps`) on the piecewise-bilinear map
   itself: each step reads the four knots around a point (no per-point copy of
   a whole row), so a step costs a few dozen element-wise operations. A step
   moves at most `MAX_STEP` per axis: where a zoom squeezes a strip to a slope
   of 0.05, an unbounded step from the wrong cell overshoots and can cycle.
3. Any point still off by more than `TOLERANCE` (none on the warps the tests
   measure; the rule is a guarantee, not a path) gets the old alternating
   inversion (`alternating_inverse`), for that point only.

Both axes of a warp are piecewise bilinear on their cells, so Newton converges
quadratically once a point's iterate sits in the right cell; the tests measure
the residual ``|l(l^{-1}(p)) - p|`` on strong zooms and random warps.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from dec_cli.warps.maps1d import EPS, blend_rows, interp

# Newton steps after the per-line start, and the largest move of one step per axis (normalized).
NEWTON_STEPS = 6
MAX_STEP = 1 / 16
# A point whose residual |l(x) - p| (max over axes, normalized) stays above this is solved the old way.
TOLERANCE = 1e-5
# In the eager active-set solve, a point whose residual is at most this many float epsilons of its
# dtype takes no further step (about 1e-6 in float32, 2e-15 in float64).
CONVERGED_EPS = 8
# A blended line whose knots are all within this of the knot positions counts as the identity.
IDENTITY_ATOL = 1e-7


def line_start(warp, lines_x: Tensor, lines_y: Tensor) -> tuple[Tensor, Tensor]:
    """The per-line start on a ``H x W`` lattice of targets: ``lines_x`` (B, W), ``lines_y`` (B, H).

    Returns ``x0, y0`` (B, H, W): row ``i`` inverts ``l_X`` along the blended row
    at ``y = lines_y[i]``, column ``j`` inverts ``l_Y`` at ``x = lines_x[j]``.
    """
    b, h, w = lines_x.shape[0], lines_y.shape[1], lines_x.shape[1]
    rows_x = blend_rows(warp.ys_x, lines_y)  # (B, H, K): l_X's row at each target row
    rows_y = blend_rows(warp.ys_y, lines_x)  # (B, W, K): l_Y's column at each target column
    xs_x = warp.xs_x.unsqueeze(1).expand(-1, h, -1)
    xs_y = warp.xs_y.unsqueeze(1).expand(-1, w, -1)
    x0 = interp(lines_x.unsqueeze(1).expand(b, h, w), rows_x, xs_x)
    y0 = interp(lines_y.unsqueeze(1).expand(b, w, h), rows_y, xs_y).transpose(1, 2)
    return x0, y0


def _line_inverse_numpy(ys: Tensor, xs: Tensor, across: Tensor, along: Tensor) -> tuple[Tensor, np.ndarray]:
    """One axis of `line_start` for one warp, row by row with ``np.interp``; and which lines are identity.

    Line ``i`` inverts the axis map blended at ``across[0, i]`` at every ``along[0]``. A line
    whose blended knots equal the knot positions (far from a zoom's disc) is the identity and
    is copied, not interpolated. For one warp on the CPU this is several times faster than
    the batched search, whose per-point cost dominates at image sizes.
    """
    rows = blend_rows(ys, across)[0].numpy()
    positions, targets = xs[0].numpy(), along[0].numpy()
    out = np.empty((rows.shape[0], targets.shape[0]), dtype=rows.dtype)
    identity = np.abs(rows - positions).max(axis=1) <= IDENTITY_ATOL
    out[identity] = targets
    for i in np.flatnonzero(~identity):
        out[i] = np.interp(targets, rows[i], positions)
    return torch.from_numpy(out), identity


def line_start_exact(warp, lines_x: Tensor, lines_y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`line_start` for one eager CPU warp, plus which targets it already solves exactly (H * W,) bool.

    Where target row ``i`` has an identity ``l_X`` line, ``x0 = px``, and ``y0`` inverts
    ``l_Y(px, .)`` exactly; if ``l_X``'s line at ``y0`` is the identity too, ``l(x0, y0) = p``:
    the start is the answer, and Newton skips it. The same holds with the axes swapped.
    """
    x0, rows_identity = _line_inverse_numpy(warp.ys_x, warp.xs_x, lines_y, lines_x)  # (H, W)
    y0t, cols_identity = _line_inverse_numpy(warp.ys_y, warp.xs_y, lines_x, lines_y)  # (W, H)
    x0n, y0n = x0.numpy(), y0t.numpy().T
    exact = (rows_identity[:, None] & _identity_line_at(warp.ys_x, warp.xs_x, y0n)) | \
        (cols_identity[None, :] & _identity_line_at(warp.ys_y, warp.xs_y, x0n))
    return x0[None], torch.from_numpy(np.ascontiguousarray(y0n))[None], torch.from_numpy(exact).reshape(-1)


def _identity_line_at(ys: Tensor, xs: Tensor, across: np.ndarray) -> np.ndarray:
    """Whether the axis map's line at each ``across`` coordinate is the identity (both control rows around it are)."""
    control = np.abs(ys[0].numpy() - xs[0].numpy()[None, :]).max(axis=1) <= IDENTITY_ATOL  # (R,)
    rows = control.shape[0]
    if rows == 1:
        return np.broadcast_to(control[0], across.shape)
    r = np.clip(np.floor(np.clip(across, 0.0, 1.0) * (rows - 1)), 0, rows - 2).astype(np.int64)
    return control[r] & control[r + 1]


def uniform_knots(xs: Tensor) -> bool:
    """Whether every row of knot positions ``xs`` (B, K) is ``linspace(0, 1, K)`` (as zoom warps' are)."""
    grid = torch.linspace(0.0, 1.0, xs.shape[-1], dtype=xs.dtype, device=xs.device)
    return bool(torch.allclose(xs, grid.expand_as(xs), rtol=0.0, atol=16 * torch.finfo(xs.dtype).eps))


def _axis_cell(xs: Tensor, ys: Tensor, u: Tensor, v: Tensor, uniform: bool = False
               ) -> tuple[Tensor, Tensor, Tensor]:
    """One axis map at along ``u`` and across ``v`` (B, M): value, d/du and d/dv (piecewise bilinear).

    With ``uniform`` knots (see `uniform_knots`) a point's cell is ``floor(u (K - 1))``, which is
    several times cheaper than the search through ``xs``.
    """
    b, rows, k = ys.shape
    if uniform:
        tu = u * (k - 1)
        i = tu.floor().clamp_(0, k - 2)
        tu = tu - i
        i = i.long()
        dx = torch.full_like(u, 1.0 / (k - 1))
    else:
        i = torch.searchsorted(xs.contiguous(), u.contiguous(), right=True).sub_(1).clamp_(0, k - 2)
        x0 = torch.gather(xs, 1, i)
        dx = (torch.gather(xs, 1, i + 1) - x0).clamp_min(EPS)
        tu = (u - x0) / dx
    flat = ys.reshape(b, rows * k)
    if rows == 1:
        f0, f1 = torch.gather(flat, 1, i), torch.gather(flat, 1, i + 1)
        slope = (f1 - f0) / dx
        return f0 + tu * (f1 - f0), slope, torch.zeros_like(u)
    pos = v.clamp(0.0, 1.0) * (rows - 1)
    r = pos.floor().clamp_(max=rows - 2)
    tv = pos - r
    base = r.long() * k + i
    v00, v01 = torch.gather(flat, 1, base), torch.gather(flat, 1, base + 1)
    v10, v11 = torch.gather(flat, 1, base + k), torch.gather(flat, 1, base + k + 1)
    lo = v00 + tu * (v01 - v00)
    hi = v10 + tu * (v11 - v10)
    value = lo + tv * (hi - lo)
    d_along = ((v01 - v00) + tv * ((v11 - v10) - (v01 - v00))) / dx
    d_across = (hi - lo) * (rows - 1)
    return value, d_along, d_across


def newton_steps(warp, px: Tensor, py: Tensor, x: Tensor, y: Tensor, steps: int = NEWTON_STEPS
                 ) -> tuple[Tensor, Tensor]:
    """Refine ``(x, y)`` towards ``l^{-1}(px, py)`` (all (B, M)) with ``steps`` Newton steps, kept in [0, 1]."""
    for _ in range(steps):
        lx, a, b = _axis_cell(warp.xs_x, warp.ys_x, x, y)  # a = dlX/dx, b = dlX/dy
        ly, d, c = _axis_cell(warp.xs_y, warp.ys_y, y, x)  # d = dlY/dy, c = dlY/dx
        rx, ry = px - lx, py - ly
        det = (a * d - b * c).clamp_min(EPS)
        x = (x + ((d * rx - b * ry) / det).clamp_(-MAX_STEP, MAX_STEP)).clamp_(0.0, 1.0)
        y = (y + ((a * ry - c * rx) / det).clamp_(-MAX_STEP, MAX_STEP)).clamp_(0.0, 1.0)
    return x, y


def active_solve(warp, px: Tensor, py: Tensor, x: Tensor, y: Tensor, iters: int, steps: int = NEWTON_STEPS,
                 exact: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Newton for one warp (B = 1) stepping only the points not yet within `CONVERGED_EPS`, then `polish`.

    Far from a zoom's disc the per-line start is already exact, and Newton settles
    the rest within a few steps, so each step runs on fewer points: an off-centre
    zoom's grid at 512 px costs about half of fixed steps on every point. Points
    marked ``exact`` (M,) are never stepped. Eager and without autograd only (the
    active set is data-dependent).
    """
    x, y = x.clone(), y.clone()
    converged = CONVERGED_EPS * torch.finfo(x.dtype).eps
    ux, uy = uniform_knots(warp.xs_x), uniform_knots(warp.xs_y)
    active = torch.arange(px.shape[1], device=px.device)
    if exact is not None and bool(exact.any()):
        active = active[~exact]
        ax, ay, tx, ty = x[:, active], y[:, active], px[:, active], py[:, active]
    else:
        ax, ay, tx, ty = x, y, px, py
    # The active points' iterates and targets are carried compacted from step to step (no re-gathering).
    for step in range(steps + 1):
        lx, a, b = _axis_cell(warp.xs_x, warp.ys_x, ax, ay, ux)
        ly, d, c = _axis_cell(warp.xs_y, warp.ys_y, ay, ax, uy)
        rx, ry = tx - lx, ty - ly
        moving = (torch.maximum(rx.abs(), ry.abs()) > converged)[0]
        active, ax, ay, tx, ty, rx, ry = (t[..., moving] for t in (active, ax, ay, tx, ty, rx, ry))
        if active.numel() == 0 or step == steps:  # the last pass only measures what is left
            break
        a, b, c, d = a[:, moving], b[:, moving], c[:, moving], d[:, moving]
        det = (a * d - b * c).clamp_min(EPS)
        ax = (ax + ((d * rx - b * ry) / det).clamp_(-MAX_STEP, MAX_STEP)).clamp_(0.0, 1.0)
        ay = (ay + ((a * ry - c * rx) / det).clamp_(-MAX_STEP, MAX_STEP)).clamp_(0.0, 1.0)
        x[:, active], y[:, active] = ax, ay
    bad = active[(torch.maximum(rx.abs(), ry.abs()) > TOLERANCE)[0]]
    if bad.numel():
        fx, fy = alternating_inverse(warp, px[:, bad], py[:, bad], iters)
        x[:, bad], y[:, bad] = fx, fy
    return x, y


def residual(warp, px: Tensor, py: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """``max(|l_X(x, y) - px|, |l_Y(x, y) - py|)`` per point (B, M)."""
    lx = _axis_cell(warp.xs_x, warp.ys_x, x, y)[0]
    ly = _axis_cell(warp.xs_y, warp.ys_y, y, x)[0]
    return torch.maximum((lx - px).abs(), (ly - py).abs())


def alternating_inverse(warp, px: Tensor, py: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """The old inversion: alternate exact 1-D inversions (x given y, then y given x) ``iters`` times.

    Robust (each half-step is exact) but it blends a whole row of knots for every
    point, so it costs ``O(points x knots)`` per sweep; kept for the points Newton misses.
    """
    x, y = px, py
    xp_x, xp_y = warp.xs_x.unsqueeze(1), warp.xs_y.unsqueeze(1)
    for _ in range(iters):
        rows_x = blend_rows(warp.ys_x, y)
        x = interp(px.unsqueeze(-1), rows_x, xp_x.expand_as(rows_x)).squeeze(-1)
        rows_y = blend_rows(warp.ys_y, x)
        y = interp(py.unsqueeze(-1), rows_y, xp_y.expand_as(rows_y)).squeeze(-1)
    return x, y


def polish(warp, px: Tensor, py: Tensor, x: Tensor, y: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """Re-solve with `alternating_inverse` the points whose residual exceeds `TOLERANCE` (all (B, M))."""
    bad = residual(warp, px, py, x, y) > TOLERANCE
    if not bool(bad.any()):
        return x, y
    x, y = x.clone(), y.clone()
    for i in torch.nonzero(bad.any(dim=1)).flatten().tolist():
        sel = bad[i]
        fx, fy = alternating_inverse(warp[i], px[i, sel][None], py[i, sel][None], iters)
        x[i, sel], y[i, sel] = fx[0], fy[0]
    return x, y


def grid_inverse(warp, lines_x: Tensor, lines_y: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """``l^{-1}`` on the lattice of targets ``lines_x`` (B, W) x ``lines_y`` (B, H): (B, H, W) each.

    ``iters`` is the sweep count of the alternating fallback (`polish`).
    """
    b, h, w = lines_x.shape[0], lines_y.shape[1], lines_x.shape[1]
    px = lines_x.unsqueeze(1).expand(b, h, w).reshape(b, -1)
    py = lines_y.unsqueeze(2).expand(b, h, w).reshape(b, -1)
    if b == 1 and _eager(warp.ys_x) and not lines_x.requires_grad:
        exact = None
        if warp.ys_x.device.type == "cpu" and warp.ys_x.dtype in (torch.float32, torch.float64):
            x0, y0, exact = line_start_exact(warp, lines_x, lines_y)
        else:
            x0, y0 = line_start(warp, lines_x, lines_y)
        x, y = active_solve(warp, px, py, x0.reshape(b, -1), y0.reshape(b, -1), iters, exact=exact)
    else:
        x0, y0 = line_start(warp, lines_x, lines_y)
        x, y = newton_steps(warp, px, py, x0.reshape(b, -1), y0.reshape(b, -1))
        x, y = _maybe_polish(warp, px, py, x, y, iters)
    return x.view(b, h, w), y.view(b, h, w)


def points_inverse(warp, px: Tensor, py: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """``l^{-1}`` at scattered points (B, M): the per-line start taken point by point, then Newton."""
    x0, y0 = alternating_inverse(warp, px, py, 1)  # one sweep: the per-line start, point by point
    x, y = newton_steps(warp, px, py, x0, y0)
    return _maybe_polish(warp, px, py, x, y, iters)


def _eager(x: Tensor) -> bool:
    """Outside autograd and compilation, where data-dependent steps are allowed."""
    return not (x.requires_grad or torch.compiler.is_compiling())


def _maybe_polish(warp, px: Tensor, py: Tensor, x: Tensor, y: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """`polish` outside autograd (a traced or differentiated inverse keeps its fixed Newton steps)."""
    if not _eager(x):
        return x, y
    return polish(warp, px, py, x, y, iters)
