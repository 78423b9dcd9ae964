"""Building timm backbones: by name, with random, hub-pretrained or local weights.

The hub is probed once: when it cannot be reached, ``--pretrained`` takes
weights from the local Hugging Face cache only (a one-line error when they
are not there). Local weights are read safely (dec_cli.backbones.weights), converted
from a foreign key layout when they have one (dec_cli.backbones.foreign_weights) and
loaded strictly: a missing, unknown or misshapen tensor is an error, never
silently skipped.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Union
from urllib.parse import urlparse

import timm
import torch
from torch import Tensor, nn

from dec_cli.core.errors import DecError, UsageError, first_line
from dec_cli.backbones.foreign_weights import Conversion, convert
from dec_cli.core.modelinfo import DecInfo, set_info
from dec_cli.backbones.weights import read_weights

try:
    from huggingface_hub import constants as hub_constants
except ImportError:  # timm then has no hub to fetch from; it reports that itself
    hub_constants = None

_OFFLINE_HINT = "pass --weights FILE with local weights, or --pretrained when the Hugging Face hub is reachable"


def classifier_keys(model: nn.Module) -> list[str]:
    """Module names of the classifier head, from timm's ``pretrained_cfg``."""
    clf = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = [clf] if isinstance(clf, str) else list(clf)
    return [n for n in names if n]


def _head_size(model: nn.Module, state: dict[str, Tensor]) -> Optional[int]:
    """Number of classes of the classifier in ``state`` (None when it has none)."""
    for clf in classifier_keys(model):
        w = state.get(f"{clf}.weight")
        if w is not None and w.dim() >= 1:
            return int(w.shape[0])
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached (fails fast when offline)."""
    if str(os.environ.get("HF_HUB_OFFLINE", "")).lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct probe says nothing; let the hub client try
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_cache_only() -> Iterator[None]:
    """Make huggingface_hub serve weights from its local cache without touching the network.

    It reads ``HF_HUB_OFFLINE`` once, at import, so the switch is its module constant.
    """
    if hub_constants is None:
        yield
        return
    before = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = before


def create(name: str, *, pretrained: bool, num_classes: Optional[int], kwargs: dict[str, Any],
           offline: bool = False) -> nn.Module:
    """``timm.create_model``; ``offline`` takes pretrained weights from the local hub cache only."""
    args = dict(kwargs)
    if num_classes is not None:
        args["num_classes"] = int(num_classes)
    try:
        with _hub_cache_only() if offline and pretrained else contextlib.nullcontext():
            return timm.create_model(name, pretrained=pretrained, **args)
    except TypeError as exc:
        raise UsageError(f"timm model {name!r} does not accept these options ({first_line(exc)})") from None
    except (OSError, RuntimeError) as exc:
        if not pretrained:
            raise
        if offline:
            raise DecError(f"cannot fetch pretrained weights for {name}: the Hugging Face hub is not reachable "
                           "and they are not in the local cache", _OFFLINE_HINT) from None
        raise DecError(f"cannot fetch pretrained weights for {name} ({first_line(exc)})", _OFFLINE_HINT) from None


def load_into(model: nn.Module, state: dict[str, Tensor], source: str, *, drop_head: bool = False) -> None:
    """Load ``state`` strictly; missing, unknown or mismatched tensors are a one-line DecError.

    ``drop_head``: a classifier of another size in ``state`` is left out (a new head is being trained).
    """
    own = model.state_dict()
    if drop_head:
        heads = tuple(f"{c}." for c in classifier_keys(model))
        state = {k: v for k, v in state.items()
                 if not (k.startswith(heads) and k in own and tuple(own[k].shape) != tuple(v.shape))}
        missing_head = [k for k in own if k.startswith(heads) and k not in state]
    else:
        missing_head = []
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise DecError(f"{source}: shape mismatch for {key!r}: file has {list(value.shape)}, "
                           f"model expects {list(own[key].shape)}",
                           "check the model name, --num-classes and --img-size")
    missing = [k for k in own if k not in state and k not in missing_head]
    unknown = [k for k in state if k not in own]
    if missing:
        raise DecError(f"{source} lacks {len(missing)} tensor(s) the model needs, e.g. {missing[0]!r}",
                       "the weights belong to a different model")
    if unknown:
        raise DecError(f"{source} has {len(unknown)} tensor(s) the model does not have, e.g. {unknown[0]!r}",
                       "the weights belong to a different model")
    model.load_state_dict(state, strict=False)


def _filter_foreign(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Apply timm's own checkpoint filter (original-format keys, position-embedding resizing)."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return state
    try:
        out = fn(dict(state), model)
    except Exception:
        return state
    return out if isinstance(out, dict) and out else state


def _load_weights(model: nn.Module, weights: Union[str, Path], name: str,
                  num_classes: Optional[int]) -> Optional[Conversion]:
    """Read a local weights file into ``model`` (foreign layouts converted); returns the conversion."""
    heads = tuple(f"{c}." for c in classifier_keys(model))
    state, conversion = convert(read_weights(weights), model, source=str(weights), model_name=name,
                                skip_shape=heads)
    if conversion is None:
        state = _filter_foreign(model, state)
    if num_classes is None:
        found = _head_size(model, state)
        if found is not None and found != getattr(model, "num_classes", None):
            model.reset_classifier(found)
    load_into(model, state, str(weights), drop_head=num_classes is not None)
    return conversion


def create_backbone(name: str, *, weights: Union[None, str, Path] = None, pretrained: bool = False,
                    num_classes: Optional[int] = None, img_size: Optional[int] = None,
                    model_kwargs: Optional[dict[str, Any]] = None, device: Union[str, torch.device] = "cpu",
                    **extra_kwargs: Any) -> nn.Module:
    """A timm model by name (random, hub-pretrained or local weights) with its ``dec_info`` record.

    ``model_kwargs`` (and any extra keyword) go to ``timm.create_model`` and are
    recorded, so a checkpoint rebuilds the same architecture.
    """
    if not timm.is_model(name.split(".", 1)[0]) and not timm.is_model(name):
        raise UsageError(f"unknown timm model {name!r}", "see timm.list_models() or 'dec models'")
    if weights is not None and pretrained:
        raise UsageError("--weights and --pretrained exclude each other", "use one source of weights")
    kwargs = {**(model_kwargs or {}), **extra_kwargs}
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    offline = pretrained and not _hub_reachable()  # then weights already in the hub cache still work
    try:
        model = create(name, pretrained=pretrained, num_classes=num_classes, kwargs=kwargs, offline=offline)
    except UsageError:
        if img_size is None:
            raise
        kwargs.pop("img_size")  # convolutional nets take any size: img_size is only the default size
        model = create(name, pretrained=pretrained, num_classes=num_classes, kwargs=kwargs, offline=offline)
    conversion = _load_weights(model, weights, name, num_classes) if weights is not None else None
    model.to(device).eval()
    set_info(model, DecInfo(
        model_name=name, num_classes=int(getattr(model, "num_classes", num_classes or 0)), model_kwargs=kwargs,
        img_size=int(img_size) if img_size is not None else None,
        weights=str(weights) if weights is not None else ("pretrained" if pretrained else None),
        weights_conversion=conversion.to_dict() if conversion is not None else None))
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The timm model inside ``torch.compile`` / DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model
