"""Will a batch fit? A cheap memory estimate checked before anything large is allocated.

Without it ``--img-size 100000`` meets the kernel's out-of-memory killer (no
message, and the whole machine feels it). The estimate is the float32 input
batch times a count of input-sized tensors alive at the peak (the batch, its
warped copies, activations); the counts are rough, measured on timm's ResNets
and ViTs (inference 4-30 times the input, training 12-240 times), and chosen
low so that only sizes that clearly cannot fit are refused.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

from dec_cli.core.errors import UsageError

# Input-sized float32 tensors per image alive at the peak of a forward pass (activations only).
EVAL_ACTIVATIONS = 12
TRAIN_ACTIVATIONS = 48


def available_memory(device: torch.device) -> Optional[int]:
    """Bytes free for tensors on ``device`` (None when it cannot be told)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def batch_bytes(batch_size: int, input_size: Sequence[int], tensors: int) -> int:
    """Estimated peak bytes: ``tensors`` float32 copies of a batch of ``input_size`` (C, H, W) images."""
    c, h, w = (int(v) for v in input_size)
    return batch_size * c * h * w * 4 * tensors


def check_batch_fits(batch_size: int, input_size: Sequence[int], device: torch.device, *, tensors: int) -> None:
    """Raise `UsageError` when the estimate exceeds the memory free on ``device``."""
    need = batch_bytes(batch_size, input_size, tensors)
    have = available_memory(device)
    if have is not None and need > have:
        c, h, w = input_size
        raise UsageError(f"a batch of {batch_size} images of {c} x {h} x {w} needs about {_gib(need)} "
                         f"but {device.type} has {_gib(have)} free",
                         "use a smaller --batch-size or --img-size")


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:,.1f} GiB"
