"""How far a DEC's fixed-point solve is from converged: the relative residual of its last iteration.

A DEQ is usually called converged when ``||f(z) - z|| / ||f(z)||`` falls below about 0.05 at the
end of its solve. Here ``z`` is the warp itself, the interior knots of ``l_X`` and ``l_Y``
(positions in [0, 1]), not the logits a DEC happens to iterate on: logits near zero (the identity)
would make the ratio meaningless, and two DECs that parametrize the warp differently (the latent
DEC's unbounded logits, the image DEC's bounded ones) are then measured the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dec_cli.warps.warp import knots_from_logits


def interior_knots(theta_x: Tensor, theta_y: Tensor) -> Tensor:
    """Logits (B, R, G) per axis -> the warp's interior knots, flat (B, 2 R (G - 1)), in float32."""
    kx = knots_from_logits(theta_x.float())[..., 1:-1]
    ky = knots_from_logits(theta_y.float())[..., 1:-1]
    return torch.cat([kx.flatten(1), ky.flatten(1)], dim=1)


def relative_residual(previous: Tensor, latest: Tensor) -> Tensor:
    """Per sample ``||latest - previous|| / ||latest||`` of flat states (B, N); 0 where N is 0.

    The denominator is floored at 1e-12 so a zero state gives a large ratio rather than a NaN.
    """
    if latest.shape[1] == 0:
        return latest.new_zeros(latest.shape[0])
    return (latest - previous).norm(dim=1) / latest.norm(dim=1).clamp_min(1e-12)
