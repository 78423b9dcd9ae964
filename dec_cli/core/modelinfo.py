"""The model record: what dec knows about a model, and the one rule for its input size.

Like timm's ``pretrained_cfg``, the record travels with the model: the typed
:class:`DecInfo` is attached as the plain mapping ``model.dec_info`` (the form
the README's Python API shows, and what a checkpoint's metadata holds), and
dec's own code reads it back with :func:`info_of` and changes it with
:func:`set_info`, never by editing the mapping in place. See docs/design.md,
"The model record".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Optional

from torch import nn

from dec_cli.core.errors import UsageError

@dataclass
class DecInfo:
    """Everything dec records about a model (the checkpoint metadata's keys, plus where it came from)."""

    model_name: str  # the timm name the architecture is rebuilt from
    num_classes: Optional[int] = None  # outputs of the classifier (info_of fills it from the model)
    class_names: Optional[list[str]] = None  # output order; None when the model has no names
    dec: bool = False  # whether DEC modules are inserted
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments
    recipe: Optional[dict[str, Any]] = None  # the resolved retrofit recipe with its insertion points
    img_size: Optional[int] = None  # the input size it was built, retrofitted or trained at
    weights: Optional[str] = None  # a timm model's weights: a file or "pretrained"
    weights_conversion: Optional[dict[str, Any]] = None  # --weights renamed from a foreign key layout
    path: Optional[str] = None  # the checkpoint it was loaded from
    format_version: Optional[int] = None  # the rest as a checkpoint stores them (dec_cli.backbones.checkpoint)
    dec_settings: Optional[dict[str, Any]] = None
    parameters: Optional[dict[str, int]] = None
    provenance: Optional[dict[str, Any]] = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DecInfo":
        """A record from ``model.dec_info`` or checkpoint metadata; unknown keys are left out."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names and v is not None}
        values["model_kwargs"] = dict(values.get("model_kwargs") or {})
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The mapping stored as ``model.dec_info``: every field, None where it is not known."""
        return asdict(self)


def info_of(model: nn.Module) -> DecInfo:
    """The record of ``model``: its ``dec_info``, completed from timm's ``pretrained_cfg``.

    A model dec did not build still has a timm architecture name; one without
    either cannot be retrofitted or saved, which is a UsageError.
    """
    data = dict(getattr(model, "dec_info", None) or {})
    name = data.get("model_name") or (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if not name:
        raise UsageError("cannot tell which timm model this is",
                         "create it with dec_cli.load_model or dec_cli.backbones.backbone.create_backbone")
    data["model_name"] = str(name)
    if data.get("num_classes") is None:
        data["num_classes"] = int(getattr(model, "num_classes", 0) or 0)
    return DecInfo.from_dict(data)


def set_info(model: nn.Module, info: DecInfo) -> None:
    """Attach ``info`` to ``model`` as ``model.dec_info``."""
    model.dec_info = info.to_dict()


def _built_size(model: nn.Module) -> Optional[int]:
    """A fixed square size the model was built for (a ViT's ``img_size``), when it differs from its
    pretrained config's; None otherwise."""
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if size is None or getattr(pe, "dynamic_img_size", False):
        return None
    cfg_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    if cfg_size is not None and tuple(cfg_size[-2:]) == tuple(size):
        return None
    return int(size[0]) if size[0] == size[1] else None


def input_size(model: nn.Module, override: Optional[int] = None) -> Optional[int]:
    """The square input size to feed ``model``; None when timm's data config should decide.

    In order: ``override`` (``--img-size``), the size recorded with the model
    (convolutional nets accept any size, so only the record knows what they
    were trained at), a fixed size the model was built for.
    """
    if override is not None:
        return int(override)
    recorded = (getattr(model, "dec_info", None) or {}).get("img_size")
    if recorded:
        return int(recorded)
    return _built_size(model)


def dry_run_size(model: nn.Module, override: Optional[int] = None) -> tuple[int, int]:
    """(H, W) of a dry-run input: :func:`input_size`, else the patch embedding's size (square or
    not), else timm's config (224 when it has none)."""
    size = input_size(model, override)
    if size is not None:
        return size, size
    patch = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if patch is not None:
        return int(patch[0]), int(patch[1])
    cfg = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
    return int(cfg[-2]), int(cfg[-1])


def image_channels(model: nn.Module) -> int:
    """Channels of the model's input image: timm's ``in_chans``, else its first convolution's, else 3.

    timm's ``pretrained_cfg`` says 3 even for ``in_chans=1`` models, so it is not asked.
    """
    chans = getattr(model, "in_chans", None)
    if isinstance(chans, int) and not isinstance(chans, bool) and chans > 0:
        return chans
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return int(first.in_channels) if first is not None else 3
