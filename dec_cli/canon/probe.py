"""Dry runs of a timm backbone: what each module really receives (shape, number of calls).

Retrofitting needs the feature layout and channel count at an insertion point,
and an automatic recipe needs them for every candidate; both come from one
forward pass on zeros with pre-hooks, not from assumptions about the class.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from dec_cli.core.errors import DecError, first_line
from dec_cli.core.modelinfo import dry_run_size, image_channels


def probe_inputs(model: nn.Module, paths: Sequence[str], img_size: Optional[int] = None,
                 calls: Optional[dict[str, int]] = None) -> dict[str, tuple]:
    """Shapes of the first input to each module in ``paths`` on a dry run (zeros, eval, no grad).

    A module whose first input is not a tensor is left out; ``calls``, when
    given, receives how many times each module ran.
    """
    shapes: dict[str, tuple] = {}
    counts = calls if calls is not None else {}
    handles = []
    for path in paths:
        counts[path] = 0

        def hook(mod, args, path=path):
            counts[path] += 1
            if args and isinstance(args[0], Tensor):
                shapes.setdefault(path, tuple(args[0].shape))
        handles.append(model.get_submodule(path).register_forward_pre_hook(hook))
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    in_chans = getattr(proj, "in_channels", None) or image_channels(model)
    h, w = dry_run_size(model, img_size)
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, h, w, device=device, dtype=dtype))
    except Exception as exc:
        raise DecError(f"dry run of the backbone at {h}x{w} failed: {type(exc).__name__}: "
                       f"{first_line(exc)}", "try --img-size N") from None
    finally:
        model.train(was_training)
        for hnd in handles:
            hnd.remove()
    return shapes
