"""The checkpoint format: one ``.safetensors`` file per model (see docs/design.md, "Contracts").

The file holds the state dict of a (retrofitted) timm model and, under the
metadata key ``dec``, a JSON document: the format version, the timm model
name and kwargs, classes, the resolved recipe, the DEC settings, parameter
counts and free-form provenance (the keys of :class:`dec_cli.core.modelinfo.DecInfo`).
Loading rebuilds the architecture from that document, never from pickled code.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch
from safetensors.torch import save_file
from torch import nn

from dec_cli.backbones.backbone import create, create_backbone, load_into, unwrap
# The header reader is torch-free (dec info); re-exported here, where the checkpoint API lives.
from dec_cli.backbones.ckptheader import FORMAT_VERSION, METADATA_KEY, checkpoint_summary, parse_metadata, read_metadata
from dec_cli.core.errors import DecError, UsageError, first_line
from dec_cli.core.files import atomic_path
from dec_cli.backbones.metacheck import check_metadata, check_points
from dec_cli.core.modelinfo import DecInfo, info_of, set_info
from dec_cli.canon.retrofit import backbone_parameters, count_parameters, dec_modules, dec_parameters, retrofit
from dec_cli.version import __version__
from dec_cli.backbones.weights import check_finite, read_safetensors

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


# --------------------------------------------------------------------------- reading


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
    tensors, meta = read_safetensors(path)
    stored = DecInfo.from_dict(parse_metadata(meta, path))
    check_finite(tensors, str(path))
    if not timm.is_model(stored.model_name):
        raise DecError(f"{path}: names timm model {stored.model_name!r}, which timm {timm.__version__} does not have",
                       "upgrade timm to the version the checkpoint's provenance names, or the file is damaged")
    model = create(stored.model_name, pretrained=False, num_classes=stored.num_classes,
                   kwargs=stored.model_kwargs)
    set_info(model, stored)
    if stored.dec and stored.recipe:
        try:
            retrofit(model, recipe=stored.recipe)  # records the recipe it resolved
        except UsageError as exc:
            raise DecError(f"{path}: stored recipe does not fit {stored.model_name} ({exc.message})",
                           "the metadata does not match the weights; re-export the checkpoint") from None
        check_points(stored.recipe, info_of(model).recipe, path, stored.model_name)
    load_into(model, tensors, str(path))
    info = replace(info_of(model), dec=stored.dec, path=str(path))
    if num_classes is not None and num_classes != stored.num_classes:
        model.reset_classifier(int(num_classes))
        info = replace(info, num_classes=int(num_classes), class_names=None)
    set_info(model, info)
    return model.to(device).eval()


# --------------------------------------------------------------------------- writing


def versions() -> dict[str, str]:
    """Versions of dec and the libraries that shape a checkpoint, for its provenance."""
    return {"dec": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}


def _metadata(model: nn.Module, info: DecInfo, provenance: dict[str, Any]) -> dict[str, Any]:
    """The ``dec`` metadata document of ``model`` (``info`` already holds its final classes and DEC flag)."""
    recipe = info.recipe if info.dec else None
    prov = dict(provenance)
    prov.setdefault("versions", versions())
    prov.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta = {
        "format_version": FORMAT_VERSION,
        "model_name": info.model_name,
        "model_kwargs": info.model_kwargs,
        "num_classes": info.num_classes,
        "class_names": info.class_names,
        "dec": info.dec,
        "recipe": recipe,
        "dec_settings": (recipe or {}).get("dec"),
        "parameters": {"backbone": count_parameters(backbone_parameters(model)),
                       "dec": count_parameters(dec_parameters(model))},
        "provenance": prov,
    }
    if info.img_size:
        meta["img_size"] = int(info.img_size)  # the input size the model was retrofitted/trained at
    return meta


def save_model(model: nn.Module, path: Union[str, Path], **provenance: Any) -> Path:
    """Write ``model`` (plain or retrofitted timm model) as one ``.safetensors`` checkpoint, atomically.

    ``provenance`` is free-form JSON-able data (command, seed, data, ...);
    ``class_names=[...]`` given here also sets the checkpoint's class names.
    """
    model = unwrap(model)
    info = info_of(model)
    class_names = provenance.pop("class_names", None) or info.class_names
    num_classes = int(getattr(model, "num_classes", info.num_classes or 0))
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if num_classes and len(class_names) != num_classes:
            raise UsageError(f"{len(class_names)} class names for a model with {num_classes} classes")
    info = replace(info, num_classes=num_classes, class_names=class_names, dec=bool(dec_modules(model)))
    try:
        text = json.dumps(_metadata(model, info, provenance), default=str)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"provenance is not JSON-serializable ({exc})") from None
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    check_finite(state, "model")
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={METADATA_KEY: text, "format": "pt"})
    except OSError as exc:
        raise DecError(f"cannot write {path}: {exc.strerror or exc}", "check the folder exists and is writable") from None
    set_info(model, info)
    return path
