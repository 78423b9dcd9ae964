"""Fixed-point solvers for the DEC: plain damped iteration and Anderson acceleration.

Both run a fixed number of map evaluations with no value-dependent branch and
no host synchronization, so a DEC forward stays capturable by
``torch.compile``. They work on a batch of flat vectors (B, D) and call
``step(x) -> g(x)``, the map whose fixed point ``x = g(x)`` is sought; every
returned iterate is what the next evaluation receives. See docs/design.md.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

SOLVERS = ("fixed", "anderson")

Step = Callable[[Tensor], Tensor]


def fixed_point(step: Step, x0: Tensor, evaluations: int) -> tuple[Tensor, list[Tensor]]:
    """Plain iteration ``x <- g(x)``: the last iterate and each evaluation's residual ``||g(x_k) - x_k||`` (B,)."""
    x, residuals = x0, []
    for _ in range(evaluations):
        gx = step(x)
        residuals.append((gx - x).norm(dim=1))
        x = gx
    return x, residuals


def anderson(step: Step, x0: Tensor, evaluations: int, *, memory: int = 5,
             ridge: float = 1e-4) -> tuple[Tensor, list[Tensor]]:
    """Anderson acceleration (type II, undamped) of ``x <- g(x)``: the last iterate and the residuals.

    Each new iterate is the combination ``sum_j a_j g(x_j)`` of the last
    ``memory`` map values whose weights ``a`` (summing to 1) minimize the norm
    of the combined residual ``sum_j a_j (g(x_j) - x_j)``, a small
    (memory x memory) least-squares problem per sample solved in closed form
    with a ridge term (relative to the residuals' scale) that keeps it well
    posed when residuals are nearly collinear or zero.
    """
    xs: list[Tensor] = [x0]
    values: list[Tensor] = []
    residuals: list[Tensor] = []
    x = x0
    for _ in range(evaluations):
        values.append(step(xs[-1]))
        residuals.append((values[-1] - xs[-1]).norm(dim=1))
        x = _combine(torch.stack(xs[-memory:], dim=1), torch.stack(values[-memory:], dim=1), ridge)
        xs.append(x)
    return x, residuals


def _combine(xs: Tensor, gs: Tensor, ridge: float) -> Tensor:
    """The constrained least-squares combination of map values ``gs`` (B, m, D) given iterates ``xs``."""
    m = xs.shape[1]
    if m == 1:
        return gs[:, 0]
    res = (gs - xs).double()  # (B, m, D)
    gram = res @ res.transpose(1, 2)  # (B, m, m)
    scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1, keepdim=True).clamp_min(1e-30)  # (B, 1)
    eye = torch.eye(m, dtype=gram.dtype, device=gram.device)
    system = gram + (ridge * scale)[..., None] * eye
    # Minimize a^T (R R^T) a with sum(a) = 1: a is proportional to system^{-1} 1.
    ones = torch.ones(gram.shape[0], m, 1, dtype=gram.dtype, device=gram.device)
    w = torch.linalg.solve_ex(system, ones)[0][..., 0]  # (B, m); solve_ex: no error check, no host sync
    a = (w / w.sum(dim=1, keepdim=True)).to(gs.dtype)
    return (a.unsqueeze(1) @ gs).squeeze(1)
