"""Single-file checkpoints and safe weight loading (DESIGN section 3).

A checkpoint is one ``.safetensors`` file: the state dict of a (retrofitted)
timm model, and under the metadata key ``dec`` a JSON document with the format
version, the timm model name and kwargs, classes, the resolved recipe, the DEC
settings and free-form provenance. Loading never unpickles: foreign
``.pth``/``.bin`` state dicts go through ``torch.load(weights_only=True)``,
which refuses anything that would need code to run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import pickle
import platform
import socket
import sys
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch
from torch import Tensor, nn

from dec_cli import __version__
from dec_cli.errors import DecError, UsageError
from dec_cli.files import atomic_path
from dec_cli.foreign_weights import convert

FORMAT_VERSION = 1
METADATA_KEY = "dec"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_OFFLINE_HINT = "pass --weights FILE with local weights, or --pretrained when the Hugging Face hub is reachable"


# --------------------------------------------------------------------------- reading weights safely


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _check_finite(tensors: dict[str, Tensor], source: str) -> None:
    for key, t in tensors.items():
        if t.is_floating_point() or t.is_complex():
            if not bool(torch.isfinite(t).all()):
                raise DecError(f"{source}: tensor {key!r} contains NaN or Inf values",
                               "the weights are damaged; re-export them or train again")


def read_safetensors(path: Union[str, Path]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; any damage is a one-line DecError."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except Exception as exc:  # safetensors raises its own error types for bad headers / truncation
        raise DecError(f"{path} is not a readable safetensors file ({_first_line(exc)})",
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
        raise DecError(f"{path} is not a readable PyTorch weights file ({_first_line(exc)})",
                       "the file is corrupt or not a state dict") from None
    except Exception as exc:  # corrupt zip, truncated pickle, wrong format
        raise DecError(f"{path} is not a readable PyTorch weights file ({_first_line(exc)})",
                       "the file is corrupt or not a state dict") from None
    return _unwrap_state_dict(obj, str(path))


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
    _check_finite(tensors, str(path))
    return tensors


def _looks_like_safetensors(path: Path) -> bool:
    """Safetensors files start with an 8-byte header length followed by ``{``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{"


# --------------------------------------------------------------------------- building models


def _classifier_keys(model: nn.Module) -> list[str]:
    clf = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = [clf] if isinstance(clf, str) else list(clf)
    return [n for n in names if n]


def _head_size(model: nn.Module, state: dict[str, Tensor]) -> Optional[int]:
    """Number of classes of the classifier in ``state`` (None when it has none)."""
    for clf in _classifier_keys(model):
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
    from urllib.parse import urlparse

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
    try:
        from huggingface_hub import constants
    except ImportError:  # timm then has no hub to fetch from; it reports that itself
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _create(name: str, *, pretrained: bool, num_classes: Optional[int], kwargs: dict[str, Any],
            offline: bool = False) -> nn.Module:
    """``timm.create_model``; ``offline`` takes pretrained weights from the local hub cache only."""
    import timm

    args = dict(kwargs)
    if num_classes is not None:
        args["num_classes"] = int(num_classes)
    try:
        with _hub_cache_only() if offline and pretrained else contextlib.nullcontext():
            return timm.create_model(name, pretrained=pretrained, **args)
    except TypeError as exc:
        raise UsageError(f"timm model {name!r} does not accept these options ({_first_line(exc)})") from None
    except (OSError, RuntimeError) as exc:
        if not pretrained:
            raise
        if offline:
            raise DecError(f"cannot fetch pretrained weights for {name}: the Hugging Face hub is not reachable "
                           "and they are not in the local cache", _OFFLINE_HINT) from None
        raise DecError(f"cannot fetch pretrained weights for {name} ({_first_line(exc)})", _OFFLINE_HINT) from None


def _load_into(model: nn.Module, state: dict[str, Tensor], source: str, *, drop_head: bool = False) -> None:
    """Load ``state`` strictly; missing, unknown or mismatched tensors are a one-line DecError."""
    own = model.state_dict()
    if drop_head:
        heads = tuple(f"{c}." for c in _classifier_keys(model))
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


def create_backbone(name: str, *, weights: Union[None, str, Path] = None, pretrained: bool = False,
                    num_classes: Optional[int] = None, img_size: Optional[int] = None,
                    model_kwargs: Optional[dict[str, Any]] = None, device: Union[str, torch.device] = "cpu",
                    **extra_kwargs: Any) -> nn.Module:
    """A timm model by name (random, hub-pretrained or local weights) with ``dec_info`` set.

    ``model_kwargs`` (and any extra keyword) go to ``timm.create_model`` and are
    recorded, so a checkpoint rebuilds the same architecture.
    """
    import timm

    if not timm.is_model(name.split(".", 1)[0]) and not timm.is_model(name):
        raise UsageError(f"unknown timm model {name!r}", "see timm.list_models() or 'dec models'")
    if weights is not None and pretrained:
        raise UsageError("--weights and --pretrained exclude each other", "use one source of weights")
    kwargs = {**(model_kwargs or {}), **extra_kwargs}
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    offline = pretrained and not _hub_reachable()  # then weights already in the hub cache still work
    try:
        model = _create(name, pretrained=pretrained, num_classes=num_classes, kwargs=kwargs, offline=offline)
    except UsageError:
        if img_size is None:
            raise
        kwargs.pop("img_size")  # convolutional nets take any size: img_size is only the default size
        model = _create(name, pretrained=pretrained, num_classes=num_classes, kwargs=kwargs, offline=offline)
    conversion = None
    if weights is not None:
        heads = tuple(f"{c}." for c in _classifier_keys(model))
        state, conversion = convert(read_weights(weights), model, source=str(weights), model_name=name,
                                    skip_shape=heads)
        if conversion is None:
            state = _filter_foreign(model, state)
        if num_classes is None:
            found = _head_size(model, state)
            if found is not None and found != getattr(model, "num_classes", None):
                model.reset_classifier(found)
        _load_into(model, state, str(weights), drop_head=num_classes is not None)
    model.to(device).eval()
    model.dec_info = {"model_name": name, "num_classes": int(getattr(model, "num_classes", num_classes or 0)),
                      "class_names": None, "dec": False, "model_kwargs": kwargs,
                      "weights": str(weights) if weights is not None else ("pretrained" if pretrained else None)}
    if conversion is not None:
        model.dec_info["weights_conversion"] = conversion.to_dict()
    if img_size is not None:
        model.dec_info["img_size"] = int(img_size)
    return model


# --------------------------------------------------------------------------- checkpoints


def read_metadata(path: Union[str, Path]) -> dict[str, Any]:
    """The ``dec`` metadata of a checkpoint, validated (format version, JSON)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such checkpoint: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
    except Exception as exc:
        raise DecError(f"{path} is not a readable safetensors file ({_first_line(exc)})",
                       "the file is corrupt or truncated, or not a dec checkpoint") from None
    return _parse_metadata(meta, path)


def _parse_metadata(meta: dict[str, str], path: Path) -> dict[str, Any]:
    if METADATA_KEY not in meta:
        raise DecError(f"{path} is not a dec checkpoint (no '{METADATA_KEY}' metadata)",
                       "for plain weights use the timm model name with --weights FILE")
    try:
        info = json.loads(meta[METADATA_KEY])
    except json.JSONDecodeError:
        raise DecError(f"{path}: checkpoint metadata is not valid JSON", "the file is damaged") from None
    if not isinstance(info, dict):
        raise DecError(f"{path}: checkpoint metadata is not a JSON object", "the file is damaged")
    version = info.get("format_version")
    if version is None:
        raise DecError(f"{path}: checkpoint has no format version", "the file was not written by dec save_model")
    if version != FORMAT_VERSION:
        raise DecError(f"{path}: unknown checkpoint format version {version!r} (this dec reads {FORMAT_VERSION})",
                       "upgrade dec or re-export the checkpoint")
    if not info.get("model_name"):
        raise DecError(f"{path}: checkpoint metadata names no timm model", "the file is damaged")
    return info


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.lower().endswith(WEIGHT_SUFFIXES)


def load_model(path_or_timm_name: Union[str, Path], *, weights: Union[None, str, Path] = None,
               num_classes: Optional[int] = None, device: Union[str, torch.device] = "cpu",
               pretrained: bool = False, **model_kwargs: Any) -> nn.Module:
    """A model in eval mode from a dec checkpoint or a timm name (with optional local weights).

    The result is the timm model itself (DEC modules inserted in place) with
    ``model.dec_info`` describing it.
    """
    text = str(path_or_timm_name)
    path = Path(text)
    if path.is_file():
        if weights is not None or pretrained:
            raise UsageError("--weights/--pretrained apply to timm model names, not to checkpoints")
        return _load_checkpoint(path, num_classes=num_classes, device=device)
    if _looks_like_path(text):
        raise UsageError(f"no such checkpoint: {text}")
    return create_backbone(text, weights=weights, pretrained=pretrained, num_classes=num_classes,
                           model_kwargs=model_kwargs or None, device=device)


def _load_checkpoint(path: Path, *, num_classes: Optional[int], device: Union[str, torch.device]) -> nn.Module:
    from dec_cli.retrofit import retrofit

    tensors, meta = read_safetensors(path)
    info = _parse_metadata(meta, path)
    _check_finite(tensors, str(path))
    kwargs = dict(info.get("model_kwargs") or {})
    model = _create(info["model_name"], pretrained=False, num_classes=info.get("num_classes"), kwargs=kwargs)
    model.dec_info = {"model_name": info["model_name"], "num_classes": info.get("num_classes"),
                      "class_names": info.get("class_names"), "dec": False, "model_kwargs": kwargs}
    if info.get("dec") and info.get("recipe"):
        try:
            retrofit(model, recipe=info["recipe"])
        except UsageError as exc:
            raise DecError(f"{path}: stored recipe does not fit {info['model_name']} ({exc.message})") from None
    _load_into(model, tensors, str(path))
    full = dict(info)
    full.update(model.dec_info)
    full.update(dec=bool(info.get("dec")), class_names=info.get("class_names"), path=str(path))
    if num_classes is not None and num_classes != info.get("num_classes"):
        model.reset_classifier(int(num_classes))
        full.update(num_classes=int(num_classes), class_names=None)
    model.dec_info = full
    return model.to(device).eval()


def _param_counts(model: nn.Module) -> dict[str, int]:
    from dec_cli.retrofit import backbone_parameters, count_parameters, dec_parameters

    return {"backbone": count_parameters(backbone_parameters(model)), "dec": count_parameters(dec_parameters(model))}


def versions() -> dict[str, str]:
    import timm

    return {"dec": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}


def unwrap(model: nn.Module) -> nn.Module:
    """The timm model inside ``torch.compile`` / DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def save_model(model: nn.Module, path: Union[str, Path], **provenance: Any) -> Path:
    """Write ``model`` (plain or retrofitted timm model) as one ``.safetensors`` checkpoint, atomically.

    ``provenance`` is free-form JSON-able data (command, seed, data, ...);
    ``class_names=[...]`` given here also sets the checkpoint's class names.
    """
    from safetensors.torch import save_file

    model = unwrap(model)
    info = dict(getattr(model, "dec_info", None) or {})
    name = info.get("model_name") or (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if not name:
        raise UsageError("cannot tell which timm model this is", "build it with dec_cli.checkpoint.load_model")
    class_names = provenance.pop("class_names", None) or info.get("class_names")
    num_classes = int(getattr(model, "num_classes", info.get("num_classes") or 0))
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if num_classes and len(class_names) != num_classes:
            raise UsageError(f"{len(class_names)} class names for a model with {num_classes} classes")
    from dec_cli.retrofit import dec_modules

    has_dec = bool(dec_modules(model))
    recipe = info.get("recipe") if has_dec else None
    prov = dict(provenance)
    prov.setdefault("versions", versions())
    prov.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta = {
        "format_version": FORMAT_VERSION,
        "model_name": name,
        "model_kwargs": info.get("model_kwargs") or {},
        "num_classes": num_classes,
        "class_names": class_names,
        "dec": has_dec,
        "recipe": recipe,
        "dec_settings": (recipe or {}).get("dec"),
        "parameters": _param_counts(model),
        "provenance": prov,
    }
    if info.get("img_size"):
        meta["img_size"] = int(info["img_size"])  # the input size the model was retrofitted/trained at
    try:
        text = json.dumps(meta, default=str)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"provenance is not JSON-serializable ({exc})") from None
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    _check_finite(state, "model")
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={METADATA_KEY: text, "format": "pt"})
    except OSError as exc:
        raise DecError(f"cannot write {path}: {exc.strerror or exc}", "check the folder exists and is writable") from None
    model.dec_info = {**info, "model_name": name, "num_classes": num_classes, "class_names": class_names,
                      "dec": has_dec}
    return path


def checkpoint_summary(path: Union[str, Path]) -> dict[str, Any]:
    """What a checkpoint holds, from its header only (no model is built): for ``dec info``."""
    from safetensors import safe_open

    info = read_metadata(path)
    total = dec = 0
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for key in f.keys():
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= int(d)
            total += n
            if ".dec." in f".{key}":
                dec += n
    recipe = info.get("recipe") or {}
    return {
        "path": str(path),
        "format_version": info["format_version"],
        "model_name": info["model_name"],
        "model_kwargs": info.get("model_kwargs") or {},
        "num_classes": info.get("num_classes"),
        "class_names": info.get("class_names"),
        "img_size": info.get("img_size"),
        "dec": bool(info.get("dec")),
        "recipe": recipe.get("name"),
        "mode": recipe.get("mode"),
        "insertion_points": recipe.get("points") or [],
        "dec_settings": info.get("dec_settings"),
        "parameters": info.get("parameters") or {},
        "stored_values": {"total": total, "dec": dec},
        "provenance": info.get("provenance") or {},
    }
