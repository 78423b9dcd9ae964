"""DEC solver residuals of an evaluation: per forward pass (`residuals`) and per image (`residual_records`)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch


def residuals(decs: Sequence[torch.nn.Module], batch: int) -> Optional[torch.Tensor]:
    """(batch, modules) solver residuals of the latest forward, or None if not available."""
    values = []
    for m in decs:
        r = getattr(m, "residual", None)
        if r is None:
            continue
        r = r.detach().float().reshape(-1).cpu()
        if r.numel() == 1:
            r = r.expand(batch)
        if r.numel() == batch:
            values.append(r)
    return torch.stack(values, dim=1) if values else None


def residual_records(res: Sequence[torch.Tensor], b: int, k: int) -> dict[str, np.ndarray]:
    """Per image, the mean and max solver residual over its clean forward and its K warped copies.

    ``res[0]`` is the clean batch's (b, M); the rest are the warped chunks', image-major.
    """
    per_image = [res[0]]
    if len(res) > 1:
        per_image.append(torch.cat(list(res[1:])).view(b, k, -1).flatten(1))  # (b, K*M)
    allr = torch.cat(per_image, dim=1).double()
    return {"res_mean": allr.mean(dim=1).numpy(), "res_max": allr.amax(dim=1).numpy()}
