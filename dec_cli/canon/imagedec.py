"""The image DEC (``input: image``): a canonicalizer that predicts its warp from the model's input image.

This is the paper's design beside the latent DEC of :mod:`dec_cli.canon.canonicalizer`
(Rahman et al., ICCV 2025): the input image, resized to ``IMAGE_SIDE`` pixels, is warped by
the current estimate, a small CNN (two conv blocks with instance norm, softplus and max-pool,
then a 1x1 conv to 2 channels pooled onto the warp grid) looks at it, and its output, bounded
by ``LOGIT_BOUND * tanh``, *is* the next estimate: an absolute, bounded update
``theta <- (1 - d) theta + d g(S^-1(x; theta))`` (``d`` the damping; 1 = the paper's update).
A bounded map of a bounded set has a fixed point, which the latent DEC's unbounded correction
lacks. The 1x1 conv starts at zero, so the warp starts, and stays at init, the identity.
The solver, phantom gradient and diagnostics are the latent DEC's (this class subclasses it).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dec_cli.canon.canonicalizer import DEC, DECSettings
from dec_cli.warps.apply import apply_warp
from dec_cli.warps.warp import Warp

INPUTS = ("features", "image")
IMAGE_SIDE = 64  # the image DEC looks at the input resized to this square: cheap next to any backbone
LOGIT_BOUND = 2.0  # |theta| <= 2: neighbouring intervals differ in width by at most e^4 (about 55x)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """conv 3x3 -> instance norm -> softplus -> max-pool 2: one stage of the image DEC's CNN."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.InstanceNorm2d(c_out), nn.Softplus(),
                         nn.MaxPool2d(2))


class ImageDEC(DEC):
    """Image deep equilibrium canonicalizer: input image -> monotone warp, by a bounded absolute update.

    ``forward(image)`` takes the model's input (B, C, H, W) and returns a
    :class:`~dec_cli.warps.warp.Warp` batch, with ``residual``, ``logits`` and the
    diagnostics of :class:`DEC`. Settings: ``channels`` and ``hidden`` are the widths of
    the two conv blocks; ``grid``, ``rows``, ``iters``, ``damping``, ``solver`` as for DEC.
    """

    def _build_head(self) -> None:
        """The CNN: two conv blocks, then a zero-initialized 1x1 conv to two channels (identity at init)."""
        s = self.settings
        self.features = nn.Sequential(_block(self.in_channels, s.channels), _block(s.channels, s.hidden))
        self.out = nn.Conv2d(s.hidden, 2, 1)  # channel 0: logits of l_X, channel 1: of l_Y
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def extra_repr(self) -> str:
        return "input=image, " + super().extra_repr()

    def project(self, x: Tensor, layout: str = "nchw", prefix_tokens: int = 0,
                grid_size: Optional[Sequence[int]] = None) -> Tensor:
        """The input image at ``IMAGE_SIDE`` x ``IMAGE_SIDE`` in float32 (the layout arguments do not apply)."""
        return F.interpolate(x.float(), size=(IMAGE_SIDE, IMAGE_SIDE), mode="bilinear", align_corners=False,
                             antialias=x.shape[-1] > IMAGE_SIDE or x.shape[-2] > IMAGE_SIDE)

    def propose(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """CNN: canonicalized image (B, C, s, s) -> bounded logits (B, R, G) per axis, mean zero per row."""
        s = self.settings
        h = self.out(self.features(z))  # (B, 2, s/4, s/4)
        tx = F.adaptive_avg_pool2d(h[:, :1], (s.rows, s.grid))[:, 0]  # (B, R, G)
        ty = F.adaptive_avg_pool2d(h[:, 1:], (s.grid, s.rows))[:, 0].transpose(1, 2)  # (B, R, G)
        # Softmax ignores a shift of a row's logits: drop it before bounding (softplus features share a large
        # positive offset that would otherwise saturate tanh) and after (one representative per warp).
        center = lambda t: t - t.mean(-1, keepdim=True)  # noqa: E731
        return center(LOGIT_BOUND * torch.tanh(center(tx.float()))), center(LOGIT_BOUND * torch.tanh(center(ty.float())))

    def _step(self, z: Tensor, theta: Tensor) -> Tensor:
        """One absolute update ``theta + d (g(S^-1(z; theta)) - theta)`` of the flat logits."""
        tx, ty = self._split(theta)
        canon = apply_warp(z, Warp.from_logits(tx, ty), inverse=True)
        gx, gy = self.propose(canon)
        target = torch.cat([gx.flatten(1), gy.flatten(1)], dim=1)
        return theta + self.settings.damping * (target - theta)


def make_dec(dec_input: str, in_channels: int, settings: DECSettings) -> DEC:
    """A DEC of the kind ``dec_input`` names (``features``: the latent DEC; ``image``: :class:`ImageDEC`)."""
    if dec_input not in INPUTS:
        raise ValueError(f"unknown DEC input {dec_input!r}; expected one of {', '.join(INPUTS)}")
    return ImageDEC(in_channels, settings) if dec_input == "image" else DEC(in_channels, settings)
