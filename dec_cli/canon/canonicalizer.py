"""The deep equilibrium canonicalizer (DEC): a small fixed-point solver for a monotone warp.

Given latent features ``F`` the DEC finds warp logits ``theta`` such that the
canonicalized projection ``S^{-1}(P F; theta)`` looks canonical to a small conv
head (docs/design.md section 2). ``P`` is a 1x1 projection to a few channels, computed
once (it commutes with warping). Each iteration warps the projection by the
current warp and lets the head propose a correction to the logits; the update
is damped. The head's last layer starts at zero, so the warp starts as the
identity and a retrofitted backbone computes exactly what it computed before.

The forward never synchronizes with the host: the iteration count is fixed and
no Python branch depends on tensor values, so it can be captured by
``torch.compile`` and CUDA graphs. Gradients flow through the last
``grad_steps`` iterations only (phantom gradient), so training memory does not
grow with the iteration count.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dec_cli.canon.convergence import interior_knots, relative_residual
from dec_cli.canon.solvers import SOLVERS, anderson, fixed_point
from dec_cli.warps.warp import Warp
from dec_cli.warps.apply import apply_warp

LAYOUTS = ("tokens", "nchw", "nhwc")


# The largest value of each integer DEC setting: beyond it a DEC cannot run in reasonable time or memory
# (grid and rows as in dec_cli.warps.randomwarp; a billion iterations would never finish).
SETTING_LIMITS = {"channels": 4096, "hidden": 4096, "grid": 64, "rows": 64, "iters": 1000, "grad_steps": 1000,
                  "memory": 100}


@dataclass(frozen=True)
class DECSettings:
    """Hyper-parameters of one DEC (stored in checkpoints and recipes)."""

    channels: int = 8  # width of the 1x1 projection
    hidden: int = 16  # width of the head's conv layer
    grid: int = 4  # G: intervals per axis map
    rows: int = 1  # R: control rows (1 = separable warp)
    iters: int = 3  # fixed iteration count
    damping: float = 0.5  # theta <- theta + damping * proposal
    grad_steps: int = 1  # phantom gradient through the last k iterations
    solver: str = "fixed"  # the no-grad iterations: "fixed" (damped iteration) or "anderson"
    memory: int = 5  # Anderson: how many past iterates are combined

    def __post_init__(self) -> None:
        for name, most in SETTING_LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DEC setting {name} must be a positive integer; got {value!r}")
            if value > most:
                raise ValueError(f"DEC setting {name} must be at most {most}; got {value}")
        if not (isinstance(self.damping, (int, float)) and 0 < float(self.damping) <= 1):
            raise ValueError(f"DEC setting damping must be in (0, 1]; got {self.damping!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"DEC setting solver must be one of {', '.join(SOLVERS)}; got {self.solver!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Optional[dict[str, Any]]) -> "DECSettings":
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown DEC setting(s): {', '.join(unknown)}")
        return cls(**data)


def to_map(x: Tensor, layout: str, prefix_tokens: int = 0, grid_size: Optional[Sequence[int]] = None) -> Tensor:
    """Features in ``layout`` -> channel-last spatial map (B, H, W, C) (a view where possible)."""
    if layout == "nhwc":
        return x
    if layout == "nchw":
        return x.permute(0, 2, 3, 1)
    if layout == "tokens":
        b, n, c = x.shape
        patches = n - prefix_tokens
        if grid_size is None:
            side = math.isqrt(patches)
            grid_size = (side, side)
        h, w = grid_size
        if h * w != patches:
            raise ValueError(f"token grid {h}x{w} does not match {patches} patch tokens")
        return x[:, prefix_tokens:].reshape(b, h, w, c)
    raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


class DEC(nn.Module):
    """Latent deep equilibrium canonicalizer: features -> monotone warp (docs/design.md section 2).

    ``forward(x, layout=..., prefix_tokens=..., grid_size=...)`` returns a
    :class:`~dec_cli.warps.warp.Warp` batch. After each forward, ``residual`` holds the
    per-sample size of the last update ``||theta_T - theta_{T-1}||`` (detached,
    shape (B,)), ``residual_rel`` the relative residual of that last update on the warp's
    interior knots (:mod:`dec_cli.canon.convergence`; detached, (B,); 0 when pinned) and
    ``logits`` the final ``(theta_x, theta_y)`` (detached). With
    ``capture`` set (see :mod:`dec_cli.canon.diagnostics`), ``residual_by_iter`` holds
    the size of every update, (B, iters), the last column being ``residual``.
    """

    def __init__(self, in_channels: int, settings: Optional[DECSettings] = None, **overrides: Any):
        super().__init__()
        base = (settings or DECSettings()).to_dict()
        base.update({k: v for k, v in overrides.items() if v is not None})
        self.settings = DECSettings(**base)
        self.in_channels = int(in_channels)
        self._build_head()
        self.residual: Optional[Tensor] = None
        self.residual_rel: Optional[Tensor] = None
        self.logits: Optional[tuple[Tensor, Tensor]] = None
        self.capture = False  # record residual_by_iter (diagnostics only; off in training)
        self.residual_by_iter: Optional[Tensor] = None
        # Pinned logits replace the solver's output (diagnostics, tests, ablations).
        self.pinned: Optional[tuple[Tensor, Tensor]] = None

    def _build_head(self) -> None:
        """The learned parts: a 1x1 projection, a conv layer and a zero-initialized output (identity at init)."""
        s = self.settings
        # The projection is a Linear on channel-last features; it commutes with warping.
        self.proj = nn.Linear(self.in_channels, s.channels)
        self.conv = nn.Conv2d(s.channels, s.hidden, 3, padding=1)
        self.out = nn.Linear(s.hidden, 2)  # per pooled cell: (logit for l_X, logit for l_Y)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def extra_repr(self) -> str:
        s = self.settings
        return (f"in_channels={self.in_channels}, channels={s.channels}, hidden={s.hidden}, grid={s.grid}, "
                f"rows={s.rows}, iters={s.iters}, damping={s.damping}, grad_steps={s.grad_steps}, solver={s.solver}")

    # ----------------------------------------------------------------- pieces

    def project(self, x: Tensor, layout: str, prefix_tokens: int = 0,
                grid_size: Optional[Sequence[int]] = None) -> Tensor:
        """The projection ``P F`` as an NCHW map (B, channels, H, W), computed once per forward."""
        if layout == "nchw":
            return F.conv2d(x, self.proj.weight[:, :, None, None], self.proj.bias)
        # Project every token first (cheap, channel-last), then drop prefix tokens and fold the grid.
        return to_map(self.proj(x), layout, prefix_tokens, grid_size).permute(0, 3, 1, 2)

    def propose(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Head: canonicalized projection (B, c, H, W) -> logit corrections (B, R, G) per axis.

        ``l_X`` logits pool the hidden map onto R bands in y times G intervals
        in x; ``l_Y`` onto G intervals in y times R bands in x.
        """
        s = self.settings
        h = F.gelu(self.conv(z))
        px = F.adaptive_avg_pool2d(h, (s.rows, s.grid))  # (B, hidden, R, G)
        py = F.adaptive_avg_pool2d(h, (s.grid, s.rows))  # (B, hidden, G, R)
        tx = self.out(px.permute(0, 2, 3, 1))[..., 0]  # (B, R, G)
        ty = self.out(py.permute(0, 2, 3, 1))[..., 1].transpose(1, 2)  # (B, R, G)
        return tx.float(), ty.float()

    def _split(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Flat logits (B, 2 R G) -> (theta_x, theta_y), each (B, R, G)."""
        s = self.settings
        tx, ty = theta.unflatten(1, (2, s.rows, s.grid)).unbind(1)
        return tx, ty

    def _step(self, z: Tensor, theta: Tensor) -> Tensor:
        """One damped update of the flat logits: ``theta + damping * head(S^-1(z; theta))``."""
        tx, ty = self._split(theta)
        canon = apply_warp(z, Warp.from_logits(tx, ty), inverse=True)
        dx, dy = self.propose(canon)
        # Softmax ignores a shift of a row's logits, so drop the shift: otherwise the head's mean
        # proposal drifts the logits forever without changing the warp, and no fixed point exists.
        dx, dy = dx - dx.mean(-1, keepdim=True), dy - dy.mean(-1, keepdim=True)
        return theta + self.settings.damping * torch.cat([dx.flatten(1), dy.flatten(1)], dim=1)

    # ----------------------------------------------------------------- solve

    def solve(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Solve for the logits from the identity; gradients through the last ``grad_steps`` updates only.

        The first ``iters - grad_steps`` updates run under ``no_grad`` with the
        configured solver (plain damped iteration or Anderson acceleration); the
        last ``grad_steps`` are plain damped updates with gradients (phantom gradient).
        """
        s = self.settings
        theta = torch.zeros(z.shape[0], 2 * s.rows * s.grid, device=z.device, dtype=torch.float32)
        free = max(s.iters - s.grad_steps, 0)
        with torch.no_grad():
            zd = z.detach()
            solver = functools.partial(anderson, memory=s.memory) if s.solver == "anderson" else fixed_point
            theta, residuals = solver(lambda t: self._step(zd, t), theta, free)
        # The last update is always one of these (grad_steps >= 1); ``before`` is its start (the identity
        # start itself when iters <= grad_steps and this is the first update).
        before = theta.detach()
        for _ in range(s.iters - free):
            before = theta.detach()
            new = self._step(z, theta)
            residuals.append((new.detach() - before).norm(dim=1))
            theta = new
        self.residual = residuals[-1]
        self.residual_rel = relative_residual(interior_knots(*self._split(before)),
                                              interior_knots(*self._split(theta.detach())))
        self.residual_by_iter = torch.stack(residuals, dim=1) if self.capture else None
        self.logits = self._split(theta.detach())
        return self._split(theta)

    def forward(self, x: Tensor, *, layout: str = "nchw", prefix_tokens: int = 0,
                grid_size: Optional[Sequence[int]] = None) -> Warp:
        if self.pinned is not None:
            tx, ty = self.pinned
            b = x.shape[0]
            tx = tx.to(x.device, torch.float32).expand(b, -1, -1)  # (1 or B, R, G) -> (B, R, G)
            ty = ty.to(x.device, torch.float32).expand(b, -1, -1)
            self.residual = torch.zeros(b, device=x.device)
            self.residual_rel = torch.zeros(b, device=x.device)
            self.residual_by_iter = x.new_zeros(b, self.settings.iters, dtype=torch.float32) if self.capture else None
            self.logits = (tx, ty)
            return Warp.from_logits(tx, ty)
        z = self.project(x, layout, prefix_tokens, grid_size)
        tx, ty = self.solve(z)
        return Warp.from_logits(tx, ty)

    def pin(self, theta_x: Optional[Tensor], theta_y: Optional[Tensor] = None) -> None:
        """Force the warp logits ((R, G), (1, R, G) or (B, R, G) each); ``pin(None)`` restores the solver."""
        if theta_x is None:
            self.pinned = None
            return
        theta_y = theta_x if theta_y is None else theta_y
        as3 = lambda t: t.detach().reshape(-1, *t.shape[-2:])  # noqa: E731
        self.pinned = (as3(theta_x), as3(theta_y))
