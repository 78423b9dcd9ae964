"""An automatic retrofit recipe for timm models that no built-in recipe covers.

The insertion point comes from timm's ``feature_info`` (the model's own list of
stages): the first stage after the stem that works at 1/8 resolution or
coarser, so its input is early-middle features. The layout (NCHW, NHWC or
tokens) and the prefix tokens are what a dry run shows that module really
receives, not what its class suggests. The result is a recipe mapping, the
same as a YAML recipe file.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

from torch import nn

from dec_cli.canon.canonicalizer import DECSettings
from dec_cli.canon.catalogue import AUTO, SUMMARY  # defined torch-free, for dec models
from dec_cli.core.errors import DecError, UsageError
from dec_cli.core.modelinfo import dry_run_size
from dec_cli.canon.probe import probe_inputs

RECIPE_HINT = ("write a recipe (YAML: name, patterns, layout tokens|nchw|nhwc, at: module paths; see README, "
               "dec retrofit) and pass --recipe FILE, or pick insertion points with --at")


def _stages(model: nn.Module) -> list[dict]:
    """timm's feature_info entries that name a module of ``model``."""
    modules = dict(model.named_modules())
    return [f for f in getattr(model, "feature_info", None) or []
            if isinstance(f, dict) and f.get("module") in modules and f["module"]]


def _preferred(stages: list[dict]) -> list[str]:
    """Module paths in order of preference: the early-middle stage, then deeper ones, then shallower."""
    if len(stages) == 1:
        return [stages[0]["module"]]
    first = next((i for i, f in enumerate(stages) if i >= 1 and int(f.get("reduction") or 0) >= 8), 1)
    order = list(range(first, len(stages))) + list(range(first - 1, 0, -1))
    return [stages[i]["module"] for i in order]


def _token_prefix(n_tokens: int, model: nn.Module) -> Optional[int]:
    """Prefix tokens in front of a square patch grid of ``n_tokens`` tokens (the model's own count, or none)."""
    for prefix in dict.fromkeys((int(getattr(model, "num_prefix_tokens", 0) or 0), 0)):
        patches = n_tokens - prefix
        if patches > 0 and math.isqrt(patches) ** 2 == patches:
            return prefix
    return None


def _spatial_layouts(shape: tuple) -> set[str]:
    """NCHW and/or NHWC readings of a 4-D input from a square image (its two spatial sides are equal)."""
    _, d1, d2, d3 = shape
    return ({"nchw"} if d2 == d3 else set()) | ({"nhwc"} if d1 == d2 else set())


def _read(shape: Optional[tuple], calls: int, model: nn.Module) -> Union[str, tuple]:
    """(layout, prefix tokens) of a candidate from its dry-run input, or why it cannot take a DEC.

    The layout is None when a 4-D input reads as both NCHW and NHWC (see :func:`_settle`).
    """
    if calls != 1:
        return f"runs {calls} times in one forward pass" if calls else "does not run in a forward pass"
    if shape is None:
        return "gets no single tensor (a list or tuple of features)"
    if len(shape) == 3:
        prefix = _token_prefix(int(shape[1]), model)
        if prefix is None:
            return f"gets {shape[1]} tokens, which are no square patch grid after the prefix tokens"
        return "tokens", prefix
    if len(shape) == 4:
        layouts = _spatial_layouts(shape)
        if not layouts:
            return f"gets {list(shape)}, neither NCHW nor NHWC with a square grid"
        return (layouts.pop() if len(layouts) == 1 else None), 0
    return f"gets a {len(shape)}-D tensor (NCHW, NHWC or (B, tokens, C) needed)"


def _settle(model: nn.Module, path: str, shape: tuple, img_size: Optional[int]) -> Union[str, tuple]:
    """NCHW or NHWC when channels equal the grid side: a second dry run at another size tells them apart."""
    h, _ = dry_run_size(model, img_size)
    try:
        other = probe_inputs(model, [path], img_size=h + 32).get(path)
    except DecError:
        other = None
    if other is None or len(other) != 4:
        return (f"gets {list(shape)}, where channels and grid side are equal and the model takes no other input "
                "size to tell NCHW from NHWC")
    changed = {i for i in (1, 2, 3) if other[i] != shape[i]}
    layout = {frozenset({2, 3}): "nchw", frozenset({1, 2}): "nhwc"}.get(frozenset(changed))
    return (layout, 0) if layout else f"gets {list(shape)}, whose spatial axes could not be told from channels"


def auto_recipe(model: nn.Module, model_name: str, *, at: Optional[Sequence[str]] = None,
                img_size: Optional[int] = None) -> dict:
    """A recipe for ``model`` derived from the model itself: one DEC at an early-middle stage (or at ``at``).

    Raises a one-line UsageError naming what is missing when no candidate fits.
    """
    stages = _stages(model)
    if at:
        candidates = list(at)
    elif stages:
        candidates = _preferred(stages)
    else:
        raise UsageError(f"no built-in recipe covers {model_name}, and it has no feature_info (timm's list of its "
                         "stages) to derive one from", RECIPE_HINT)
    calls: dict[str, int] = {}
    shapes = probe_inputs(model, candidates, img_size, calls)
    found: dict[str, tuple] = {}
    reasons: dict[str, str] = {}
    for path in candidates:
        read = _read(shapes.get(path), calls[path], model)
        if isinstance(read, tuple) and read[0] is None:
            read = _settle(model, path, shapes[path], img_size)
        if isinstance(read, str):
            reasons[path] = read
            if at:
                raise UsageError(f"{model_name}: {path} cannot take a DEC automatically: it {read}", RECIPE_HINT)
        else:
            found[path] = read
            if not at:
                break
    if not found:
        why = "; ".join(f"{p} {r}" for p, r in reasons.items())
        raise UsageError(f"no built-in recipe covers {model_name}, and no stage in its feature_info takes one "
                         f"feature tensor a DEC can warp ({why})", RECIPE_HINT)
    if len(set(found.values())) > 1:
        raise UsageError(f"{model_name}: the insertion points get different feature layouts "
                         f"({', '.join(f'{p}: {v[0]}' for p, v in found.items())})", RECIPE_HINT)
    points = list(found)
    layout, prefix = found[points[0]]
    shape = shapes[points[0]]
    channels = shape[1] if layout == "nchw" else shape[-1]
    how = "the given insertion points" if at else "timm's feature_info (first stage at 1/8 resolution or coarser)"
    return {
        "name": AUTO, "patterns": [model_name.split(".", 1)[0]], "layout": layout, "at": points,
        "mode": "canonicalize", "dec": DECSettings().to_dict(), "prefix_tokens": prefix, "source": AUTO,
        "description": f"derived from {model_name} itself: DEC before {', '.join(points)} ({layout} features, "
                       f"{channels} channels, {prefix} prefix tokens), chosen from {how}",
    }
