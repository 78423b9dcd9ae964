"""State dicts saved in another library's key layout, renamed to timm's keys.

A layout is recognised by its key names. Its conversion is a name map built
from the timm model's own structure (timm key -> foreign key) and checked
tensor by tensor: a missing or extra tensor, or a shape that differs, stops
with a one-line error naming the tensor, so nothing is loaded by guess. Add a
layout by appending a :class:`ForeignLayout` to :data:`LAYOUTS`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

from torch import Tensor, nn
from timm.models.efficientnet import EfficientNet

from dec_cli.core.errors import DecError

_HINT = "the file is damaged or holds another model's weights; nothing was loaded"


@dataclass(frozen=True)
class Conversion:
    """What a conversion did, for the caller to report (``DecInfo.weights_conversion``)."""

    source: str
    layout: str
    model_name: str
    tensors: int

    def to_dict(self) -> dict:
        return asdict(self)


def describe(conversion: dict) -> str:
    """One console line for a recorded conversion."""
    return (f"weights {conversion['source']}: {conversion['layout']} layout, {conversion['tensors']} tensors "
            f"renamed to timm's {conversion['model_name']} keys (names and shapes checked)")


@dataclass(frozen=True)
class ForeignLayout:
    """A foreign key layout: how to recognise it and how timm's keys are named in it."""

    name: str
    prefixes: tuple[str, ...]  # a state dict with a key starting with one of these is in this layout
    accepts: Callable[[nn.Module], bool]  # which timm models it converts to
    targets: str  # those models, in words (for the error when the model is another)
    key_map: Callable[[nn.Module], dict[str, str]]  # timm key -> foreign key, for every tensor of the model

    def recognises(self, state: dict[str, Tensor]) -> bool:
        return any(k.startswith(self.prefixes) for k in state)


# --------------------------------------------------------------------------- efficientnet_pytorch


_EFFNET_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1",
               "classifier": "_fc"}
_SE = {"se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand"}
# Per timm block class: timm module name -> efficientnet_pytorch module name inside `_blocks.N`.
_EFFNET_BLOCKS = {
    "DepthwiseSeparableConv": {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv",
                               "bn2": "_bn2", **_SE},
    "InvertedResidual": {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
                         "conv_pwl": "_project_conv", "bn3": "_bn2", **_SE},
}


def _is_timm_efficientnet(model: nn.Module) -> bool:
    return isinstance(model, EfficientNet)


def _efficientnet_pytorch_map(model: nn.Module) -> dict[str, str]:
    """timm EfficientNet keys -> efficientnet_pytorch keys; its ``_blocks`` are timm's blocks numbered flat."""
    flat: dict[str, tuple[int, dict[str, str]]] = {}
    for n, (path, block) in enumerate((f"blocks.{s}.{i}", b) for s, stage in enumerate(model.blocks)
                                      for i, b in enumerate(stage)):
        roles = _EFFNET_BLOCKS.get(type(block).__name__)
        if roles is None:
            raise DecError(f"timm block {path} ({type(block).__name__}) has no counterpart in the "
                           "efficientnet_pytorch layout", "convert these weights to timm's keys yourself")
        flat[path] = (n, roles)
    out = {}
    for key in model.state_dict():
        module, _, param = key.rpartition(".")
        if module in _EFFNET_TOP:
            out[key] = f"{_EFFNET_TOP[module]}.{param}"
            continue
        parts = module.split(".")
        block, inner = ".".join(parts[:3]), ".".join(parts[3:])
        n, roles = flat.get(block, (None, {}))
        if inner not in roles:
            raise DecError(f"timm tensor {key!r} has no counterpart in the efficientnet_pytorch layout",
                           "convert these weights to timm's keys yourself")
        out[key] = f"_blocks.{n}.{roles[inner]}.{param}"
    return out


LAYOUTS: list[ForeignLayout] = [
    ForeignLayout(name="efficientnet_pytorch", prefixes=("_conv_stem.", "_blocks.", "_conv_head."),
                  accepts=_is_timm_efficientnet, targets="timm's EfficientNet models (tf_efficientnet_lite0, ...)",
                  key_map=_efficientnet_pytorch_map),
]


# --------------------------------------------------------------------------- conversion


def detect_layout(state: dict[str, Tensor]) -> Optional[ForeignLayout]:
    """The registered foreign layout ``state`` is in, or None (timm's own keys, or unknown)."""
    return next((layout for layout in LAYOUTS if layout.recognises(state)), None)


def convert(state: dict[str, Tensor], model: nn.Module, *, source: str, model_name: str,
            skip_shape: tuple[str, ...] = ()) -> tuple[dict[str, Tensor], Optional[Conversion]]:
    """``state`` renamed to ``model``'s keys when it is in a foreign layout, else unchanged with None.

    Every tensor must map one to one, with the shape the model has; keys
    starting with ``skip_shape`` (the classifier, which may be replaced) are
    renamed but their shapes are left to the caller.
    """
    layout = detect_layout(state)
    if layout is None:
        return state, None
    where = f"{source} ({layout.name} layout)"
    if not layout.accepts(model):
        raise DecError(f"{where} converts to {layout.targets}, not to {model_name}",
                       "pass the timm model these weights were trained as")
    own = model.state_dict()
    key_map = layout.key_map(model)
    wanted = set(key_map.values())
    extra = [k for k in state if k not in wanted]
    if extra:
        raise DecError(f"{where} has tensor {extra[0]!r}, which {model_name} has no place for "
                       f"({len(extra)} such tensor(s))", _HINT)
    for timm_key, foreign in key_map.items():
        if foreign not in state:
            raise DecError(f"{where} lacks tensor {foreign!r} ({model_name}'s {timm_key!r})", _HINT)
        have, need = tuple(state[foreign].shape), tuple(own[timm_key].shape)
        if have != need and not timm_key.startswith(skip_shape):
            raise DecError(f"{where}: tensor {foreign!r} has shape {list(have)}, {model_name}'s {timm_key!r} "
                           f"needs {list(need)}", _HINT)
    converted = {timm_key: state[foreign] for timm_key, foreign in key_map.items()}
    return converted, Conversion(source=source, layout=layout.name, model_name=model_name, tensors=len(converted))
