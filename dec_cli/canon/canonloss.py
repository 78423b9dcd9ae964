"""The self-supervised canonicalization loss of ``dec finetune --canon-weight``.

Training warps are known, which gives every DEC a target without labels: if
``x' = S(x; T)`` and the features are equivariant, the canonical forms
``S^-1(F(x'); Phi(x'))`` and ``S^-1(F(x); Phi(x))`` agree exactly when
``Phi(x') = T o Phi(x)`` (docs/design.md). The loss compares the two sides as
point maps on a grid, relative to how far ``T`` moves the points: 1 is what
the identity DEC scores, 0 is a DEC that follows the warp exactly. Being a
statement about warps, not about the features, it cannot be met by collapsing
every image onto one constant canonical form (a constant ``Phi`` scores 1).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from dec_cli.canon.canonicalizer import DEC
from dec_cli.warps.maps1d import pixel_centres
from dec_cli.warps.warp import Warp

GRID_POINTS = 16  # points per axis at which the warps are compared


@contextlib.contextmanager
def dec_outputs(model: nn.Module) -> Iterator[list[Warp]]:
    """Collect the warp every DEC module of ``model`` returns during the forwards run inside the block."""
    warps: list[Warp] = []
    hooks = [m.register_forward_hook(lambda _m, _args, out: warps.append(out))
             for m in model.modules() if isinstance(m, DEC)]
    try:
        yield warps
    finally:
        for hook in hooks:
            hook.remove()


def canon_loss(warps: Sequence[Warp], known: Warp) -> Tensor:
    """Mean over DEC outputs of ``E|Phi(x')(p) - T(Phi(x)(p))|^2 / E|T(p) - p|^2``.

    Each warp in ``warps`` covers a batch of 2B: the B clean images first, then
    their B warped copies ``x' = S(x; T)`` with ``T = known`` (batch B).
    """
    if not warps:
        raise ValueError("the model has no DEC module, so there is nothing to canonicalize")
    b = known.batch
    c = pixel_centres(GRID_POINTS, device=known.ys_x.device)
    px = c.repeat(GRID_POINTS)[None].expand(b, -1)
    py = c.repeat_interleave(GRID_POINTS)[None].expand(b, -1)
    tx, ty = known.forward_points(px, py)
    moved = ((tx - px).square() + (ty - py).square()).mean(dim=1).clamp_min(1e-8)  # (B,)
    losses = []
    for warp in warps:
        clean, warped = warp[:b], warp[b:]
        cx, cy = clean.forward_points(px, py)
        target_x, target_y = known.forward_points(cx, cy)
        wx, wy = warped.forward_points(px, py)
        gap = ((wx - target_x).square() + (wy - target_y).square()).mean(dim=1)
        losses.append((gap / moved).mean())
    return torch.stack(losses).mean()
