"""Reading weight files safely: ``.safetensors``, or torch files with ``torch.load(weights_only=True)``.

Nothing here unpickles code: torch refuses any pickle that would need a
non-allow-listed global before it runs, and that refusal becomes a one-line
DecError. Every tensor read is checked to be finite, so damaged weights stop
here instead of producing NaN predictions later.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Union

import torch
from safetensors import safe_open
from torch import Tensor

from dec_cli.core.errors import DecError, UsageError, first_line


def check_finite(tensors: dict[str, Tensor], source: str) -> None:
    """Raise a DecError naming the first floating tensor with a NaN or Inf value."""
    for key, t in tensors.items():
        if t.is_floating_point() or t.is_complex():
            if not bool(torch.isfinite(t).all()):
                raise DecError(f"{source}: tensor {key!r} contains NaN or Inf values",
                               "the weights are damaged; re-export them or train again")


def read_safetensors(path: Union[str, Path]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; any damage is a one-line DecError."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except Exception as exc:  # safetensors raises its own error types for bad headers / truncation
        raise DecError(f"{path} is not a readable safetensors file ({first_line(exc)})",
                       "the file is corrupt or truncated; copy or export it again") from None
    return tensors, meta


def _unwrap_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    """The state dict inside a loaded torch object (common wrappers and DDP prefixes removed)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "module"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                obj = inner
                break
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj)):
        raise DecError(f"{source} holds no state dict (a mapping of names to tensors)",
                       "save weights with torch.save(model.state_dict(), FILE) or as .safetensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise DecError(f"{source} holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def read_torch_weights(path: Union[str, Path]) -> dict[str, Tensor]:
    """A state dict from a ``.pth``/``.bin`` file with ``torch.load(weights_only=True)``.

    Pickles that need code (any non-allow-listed global) are refused by torch
    before anything runs; that refusal becomes a clear DecError.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise DecError(f"{path} contains pickled code; refused to load it (nothing was executed)",
                           "convert it to .safetensors or a plain state dict in a trusted environment") from None
        raise DecError(f"{path} is not a readable PyTorch weights file ({first_line(exc)})",
                       "the file is corrupt or not a state dict") from None
    except Exception as exc:  # corrupt zip, truncated pickle, wrong format
        raise DecError(f"{path} is not a readable PyTorch weights file ({first_line(exc)})",
                       "the file is corrupt or not a state dict") from None
    return _unwrap_state_dict(obj, str(path))


def _looks_like_safetensors(path: Path) -> bool:
    """Safetensors files start with an 8-byte header length followed by ``{``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


def read_weights(path: Union[str, Path]) -> dict[str, Tensor]:
    """A finite state dict from ``.safetensors`` or a weights-only torch file."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"no such weights file: {path}")
    if path.suffix.lower() == ".safetensors" or _looks_like_safetensors(path):
        tensors, _ = read_safetensors(path)
        if not tensors:
            raise DecError(f"{path} holds no tensors")
    else:
        tensors = read_torch_weights(path)
    check_finite(tensors, str(path))
    return tensors
