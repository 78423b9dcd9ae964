"""DEC solver residuals of an evaluation: per forward pass, per image, and per DEC module.

Two measures: ``residual`` (the size of each DEC's last logit update, reported as ``residual_mean`` /
``residual_max`` over modules and forwards) and ``residual_rel`` (each DEC's relative residual on the
warp's knots, :mod:`dec_cli.canon.convergence`, averaged per module; the report's ``residual_rel`` is the
largest module mean, ``residual_rel_by_dec`` every module's). Per-image records are gathered in image
order under torchrun, so the summaries equal the single-process ones.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

REL = "residual_rel"  # the DEC attribute, the metric and the --fail-if name


def _per_sample(m: torch.nn.Module, attr: str, batch: int) -> Optional[torch.Tensor]:
    """The module's ``attr`` of its latest forward as a float (batch,) CPU tensor, or None if it has none."""
    r = getattr(m, attr, None)
    if r is None:
        return None
    r = r.detach().float().reshape(-1).cpu()
    if r.numel() == 1:
        r = r.expand(batch)
    return r if r.numel() == batch else None


def residuals(decs: Sequence[torch.nn.Module], batch: int) -> Optional[torch.Tensor]:
    """(batch, modules) solver residuals of the latest forward, or None if not available."""
    values = [r for r in (_per_sample(m, "residual", batch) for m in decs) if r is not None]
    return torch.stack(values, dim=1) if values else None


def rel_decs(model: torch.nn.Module, decs: Sequence[torch.nn.Module]) -> list[tuple[str, torch.nn.Module]]:
    """``(module path, DEC)`` of the DECs that measure ``residual_rel``, in order (other DEC kinds are skipped)."""
    paths = {id(m): path for path, m in model.named_modules()}
    return [(paths.get(id(m), ""), m) for m in decs if hasattr(m, REL)]


def relative_residuals(decs: Sequence[torch.nn.Module], batch: int) -> Optional[torch.Tensor]:
    """(batch, modules) ``residual_rel`` of the latest forward, one column per DEC; None if one is missing."""
    values = [_per_sample(m, REL, batch) for m in decs]
    if not values or any(v is None for v in values):
        return None
    return torch.stack(values, dim=1)


def _image_major(res: Sequence[torch.Tensor], b: int, k: int) -> torch.Tensor:
    """(b, 1 + K, M) float64: each image's clean forward, then its K warped copies.

    ``res[0]`` is the clean batch's (b, M); the rest are the warped chunks', image-major.
    """
    views = [res[0].unsqueeze(1)]
    if len(res) > 1:
        views.append(torch.cat(list(res[1:])).view(b, k, -1))
    return torch.cat(views, dim=1).double()


def residual_records(res: Sequence[torch.Tensor], b: int, k: int) -> dict[str, np.ndarray]:
    """Per image, the mean and max solver residual over its clean forward and its K warped copies."""
    allr = _image_major(res, b, k).flatten(1)
    return {"res_mean": allr.mean(dim=1).numpy(), "res_max": allr.amax(dim=1).numpy()}


def relative_records(rel: Sequence[torch.Tensor], b: int, k: int) -> dict[str, np.ndarray]:
    """Per image and DEC (b, M), the mean ``residual_rel`` over its clean forward and its K warped copies."""
    return {"res_rel": _image_major(rel, b, k).mean(dim=1).numpy()}


class ResidualLog:
    """The residuals of one batch's forwards: call :meth:`after` after each, then :meth:`records`."""

    def __init__(self, decs: Sequence[torch.nn.Module], rel: Sequence[torch.nn.Module]):
        self.decs, self.rel = list(decs), list(rel)
        self.res: list[Optional[torch.Tensor]] = []
        self.res_rel: list[Optional[torch.Tensor]] = []

    def after(self, batch: int) -> None:
        """Read the modules after a forward of ``batch`` images (the clean one first, then the warped chunks)."""
        if self.decs:
            self.res.append(residuals(self.decs, batch))
            self.res_rel.append(relative_residuals(self.rel, batch))

    def records(self, b: int, k: int) -> dict[str, np.ndarray]:
        """The per-image records of whichever measure every forward of the batch reported."""
        out: dict[str, np.ndarray] = {}
        if self.res and all(r is not None for r in self.res):
            out.update(residual_records(self.res, b, k))
        if self.res_rel and all(r is not None for r in self.res_rel):
            out.update(relative_records(self.res_rel, b, k))
        return out


def relative_summary(rec: dict[str, np.ndarray], paths: Sequence[str]) -> tuple[Optional[float], list[dict[str, Any]]]:
    """``residual_rel`` (the largest per-DEC mean, None without records) and ``residual_rel_by_dec``.

    ``rec`` must be sorted by image index (one fixed summation order, whatever the world size).
    """
    if "res_rel" not in rec or not rec["res_rel"].size:
        return None, []
    means = rec["res_rel"].mean(axis=0, dtype=np.float64)
    by_dec = [{"path": path, REL: float(v)} for path, v in zip(paths, means)]
    return float(means.max()), by_dec
