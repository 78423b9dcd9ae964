"""Insert DEC canonicalizers into a timm backbone, in place, following a recipe.

A recipe (YAML, ``dec_cli/models/*.yaml``) names the timm models it covers by
glob, the feature layout at its insertion points (``tokens``, ``nchw``,
``nhwc``), the default insertion points (timm module paths such as
``blocks.1``, ``layers.1``, ``stages.1``, ``layer2``), the mode and the DEC
settings. :func:`retrofit` wraps each chosen module ``M`` in a
:class:`DECBlock` that computes ``M(S^{-1}(F; Phi))`` (``canonicalize``) or
``S(M(S^{-1}(F; Phi)); Phi)`` (``equivariant``) with ``Phi = DEC(F)``. Models
no recipe covers get one derived from the model itself (``dec_cli.canon.autorecipe``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from torch import nn

from dec_cli.canon.catalogue import recipe_folder
from dec_cli.canon.autorecipe import AUTO, auto_recipe
from dec_cli.canon.canonicalizer import DEC, LAYOUTS, DECSettings
from dec_cli.canon.decblock import MODES, DECBlock, record_image_size, record_source_image
from dec_cli.canon.imagedec import INPUTS, make_dec
from dec_cli.core.errors import UsageError
from dec_cli.core.modelinfo import image_channels, info_of, set_info
from dec_cli.canon.probe import probe_inputs


# --------------------------------------------------------------------------- recipes


@dataclass
class Recipe:
    """Where and how to insert DEC modules into one family of timm backbones."""

    name: str
    patterns: list[str]
    layout: str
    at: list[str]
    mode: str = "canonicalize"
    dec: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = "builtin"
    prefix_tokens: Optional[int] = None  # tokens layout: None means the model's num_prefix_tokens
    input: str = "features"  # what each DEC looks at: its point's features, or the model's input image

    def matching_pattern_length(self, model_name: str) -> int:
        """Length of the longest pattern matching ``model_name`` (with or without its tag); -1 if none."""
        base = model_name.split(".", 1)[0]
        return max((len(p) for p in self.patterns
                    if fnmatch.fnmatchcase(base, p) or fnmatch.fnmatchcase(model_name, p)), default=-1)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "patterns": list(self.patterns),
                "layout": self.layout, "at": list(self.at), "mode": self.mode, "dec": dict(self.dec),
                "source": self.source, "prefix_tokens": self.prefix_tokens,
                # Written only when not the default, so checkpoints of the latent DEC stay as they were.
                **({"input": self.input} if self.input != "features" else {})}


def _recipe_from_dict(data: Any, source: str) -> Recipe:
    """Validate a parsed recipe; every problem is a one-line UsageError naming ``source``."""
    if not isinstance(data, dict):
        raise UsageError(f"recipe {source} is not a mapping", "see 'dec models' for the recipe format")
    required = ("name", "patterns", "layout", "at")
    missing = [k for k in required if k not in data]
    if missing:
        raise UsageError(f"recipe {source} lacks {', '.join(missing)}",
                         "a recipe needs name, patterns, layout and at (see dec_cli/models/*.yaml)")
    known = {"name", "patterns", "layout", "at", "mode", "dec", "description", "source", "points", "prefix_tokens",
             "input"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"recipe {source} has unknown key(s) {', '.join(unknown)}",
                         f"allowed keys: {', '.join(sorted(known - {'source', 'points'}))}")
    patterns = data["patterns"]
    patterns = [patterns] if isinstance(patterns, str) else patterns
    at = data["at"]
    at = [a.strip() for a in at.split(",")] if isinstance(at, str) else at
    if not (isinstance(patterns, list) and all(isinstance(p, str) for p in patterns)):
        raise UsageError(f"recipe {source}: patterns must be a list of globs")
    if not (isinstance(at, list) and at and all(isinstance(a, str) and a for a in at)):
        raise UsageError(f"recipe {source}: at must be a non-empty list of module paths")
    if data["layout"] not in LAYOUTS:
        raise UsageError(f"recipe {source}: layout {data['layout']!r} is not one of {', '.join(LAYOUTS)}")
    mode = data.get("mode", "canonicalize")
    if mode not in MODES:
        raise UsageError(f"recipe {source}: mode {mode!r} is not one of {', '.join(MODES)}")
    prefix = data.get("prefix_tokens")
    if prefix is not None and not (isinstance(prefix, int) and prefix >= 0):
        raise UsageError(f"recipe {source}: prefix_tokens must be a whole number >= 0")
    dec_input = data.get("input", "features")
    if dec_input not in INPUTS:
        raise UsageError(f"recipe {source}: input {dec_input!r} is not one of {', '.join(INPUTS)}")
    dec = data.get("dec") or {}
    try:
        DECSettings.from_dict(dec)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"recipe {source}: {exc}") from None
    return Recipe(name=str(data["name"]), patterns=list(patterns), layout=data["layout"], at=list(at),
                  mode=mode, dec=dict(dec), description=str(data.get("description", "")),
                  source=str(data.get("source", source)), prefix_tokens=prefix, input=dec_input)


def load_recipe_file(path: Union[str, Path]) -> Recipe:
    """Read a user recipe from a YAML file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise UsageError(f"recipe {path} is not valid YAML{where}") from None
    return _recipe_from_dict(data, str(path))


def builtin_recipes() -> list[Recipe]:
    """The recipes shipped in ``dec_cli/models/``, sorted by name."""
    import yaml

    out = []
    folder = recipe_folder()
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".yml")):
            out.append(_recipe_from_dict(yaml.safe_load(entry.read_text(encoding="utf-8")), "builtin"))
    return sorted(out, key=lambda r: r.name)


def find_recipe(model_name: str) -> Optional[Recipe]:
    """The built-in recipe whose globs match ``model_name`` (most specific pattern wins)."""
    best, best_len = None, -1
    for recipe in builtin_recipes():
        length = recipe.matching_pattern_length(model_name)
        if length > best_len:
            best, best_len = recipe, length
    return best


def resolve_recipe(recipe: Union[None, str, Path, dict, Recipe], model_name: str) -> Recipe:
    """A recipe from a name, a YAML file, a dict (as stored in checkpoints) or by matching ``model_name``."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return _recipe_from_dict(recipe, recipe.get("source", "checkpoint"))
    if recipe is None:
        found = find_recipe(model_name)
        if found is None:
            raise UsageError(f"no recipe covers timm model {model_name!r}",
                             "pass --recipe FILE (a YAML recipe) or pick a model listed by 'dec models'")
        return found
    text = str(recipe)
    for r in builtin_recipes():
        if r.name == text:
            return r
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml") or path.exists():
        return load_recipe_file(path)
    names = ", ".join(r.name for r in builtin_recipes())
    raise UsageError(f"unknown recipe {text!r}", f"use one of {names}, auto, or a YAML file path")


def _channels(shape: tuple, layout: str) -> int:
    return int(shape[1]) if layout == "nchw" else int(shape[-1])


def _check_layout(path: str, shape: tuple, layout: str) -> None:
    want = 3 if layout == "tokens" else 4
    if len(shape) != want:
        raise UsageError(f"{path} gets a {len(shape)}-D input {list(shape)}, not the {layout} layout the recipe says",
                         "choose insertion points from the model's feature_info or fix the recipe's layout")


def _feature_points(model: nn.Module) -> list[str]:
    """The module paths timm's ``feature_info`` lists: the natural insertion points."""
    return [f["module"] for f in getattr(model, "feature_info", []) if isinstance(f, dict) and "module" in f]


def _check_points(model: nn.Module, name: str, points: list[str]) -> None:
    """Refuse insertion points the model lacks, the root module, or a point listed twice."""
    modules = dict(model.named_modules())
    for path in points:
        if path not in modules or path == "":
            valid = _feature_points(model)
            hint = f"insertion points of {name}: {', '.join(valid)}" if valid else "use module paths of model.named_modules()"
            raise UsageError(f"{name} has no module {path!r}", hint)
    if len(set(points)) != len(points):
        raise UsageError(f"insertion point listed twice: {', '.join(points)}")


def _point_inputs(model: nn.Module, name: str, points: list[str], rec: Recipe,
                  stored_points: Any, img_size: Optional[int]) -> tuple[dict, dict]:
    """Input shapes and channel counts at each point: from a checkpoint's record, else by a probe forward."""
    known = {p["path"]: p for p in (stored_points or []) if isinstance(p, dict) and "path" in p}
    if all(p in known and "in_channels" in known[p] for p in points):
        shapes = {p: tuple(known[p].get("shape") or ()) for p in points}
        return shapes, {p: int(known[p]["in_channels"]) for p in points}
    shapes = probe_inputs(model, points, img_size)
    missing = [p for p in points if p not in shapes]
    if missing:
        raise UsageError(f"{', '.join(missing)} never ran in a forward pass of {name}",
                         f"insertion points of {name}: {', '.join(_feature_points(model))}")
    for p in points:
        _check_layout(p, shapes[p], rec.layout)
    return shapes, {p: _channels(shapes[p], rec.layout) for p in points}


def _insert_blocks(model: nn.Module, points: list[str], channels: dict, settings: DECSettings,
                   rec: Recipe, mode: str, dec_input: str) -> int:
    """Wrap each point's module in a DECBlock with a fresh DEC; return the prefix-token count used."""
    prefix = 0 if rec.layout != "tokens" else rec.prefix_tokens if rec.prefix_tokens is not None \
        else int(getattr(model, "num_prefix_tokens", 0) or 0)
    patch_embed = getattr(model, "patch_embed", None) if rec.layout == "tokens" else None
    param = next(model.parameters(), None)
    wrappers = []
    for path in points:
        block = model.get_submodule(path)
        dec = make_dec(dec_input, channels[path], settings)
        if param is not None:
            dec.to(device=param.device, dtype=param.dtype if param.is_floating_point() else None)
        wrapper = DECBlock(block, dec, layout=rec.layout, mode=mode, prefix_tokens=prefix, patch_embed=patch_embed,
                           image_input=dec_input == "image")
        parent_path, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, leaf, wrapper)
        wrappers.append(wrapper)
    if patch_embed is not None:
        # Token grids of non-square inputs (dynamic_img_size) follow the latest input image.
        model._dec_token_blocks = wrappers
        model.register_forward_pre_hook(record_image_size)
    if dec_input == "image":
        model._dec_image_blocks = wrappers
        model.register_forward_pre_hook(record_source_image)
    return prefix


def retrofit(model: nn.Module, *, recipe: Union[None, str, Path, dict, Recipe] = None,
             at: Union[None, str, Sequence[str]] = None, mode: Optional[str] = None,
             grid: Optional[int] = None, rows: Optional[int] = None, iters: Optional[int] = None,
             img_size: Optional[int] = None, dec_input: Optional[str] = None, **dec_overrides: Any) -> nn.Module:
    """Insert DEC modules into the timm ``model`` in place and return it.

    At init every DEC proposes the identity warp, so the model computes what it
    computed before (up to float rounding). ``dec_input`` (default: the recipe's ``input``,
    else ``features``) picks the latent DEC or the image DEC (:mod:`dec_cli.canon.imagedec`).
    Records the resolved recipe in ``model.dec_info``.
    """
    info = info_of(model)
    name = info.model_name
    stored_points = recipe.get("points") if isinstance(recipe, dict) else None
    if isinstance(at, str):
        at = [a.strip() for a in at.split(",") if a.strip()]
    if mode is not None and mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}", f"use one of {', '.join(MODES)}")
    if dec_modules(model):
        raise UsageError("this model already has DEC modules", "retrofit a plain timm backbone")
    _check_points(model, name, list(at or []))
    if recipe == AUTO or (recipe is None and find_recipe(name) is None):
        rec = _recipe_from_dict(auto_recipe(model, name, at=at, img_size=img_size), AUTO)
    else:
        rec = resolve_recipe(recipe, name)
    points = list(at) if at else list(rec.at)
    _check_points(model, name, points)
    mode = mode or rec.mode
    try:
        settings = DECSettings.from_dict({**rec.dec, **{k: v for k, v in dict(
            grid=grid, rows=rows, iters=iters, **dec_overrides).items() if v is not None}})
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    dec_input = dec_input or rec.input
    if dec_input not in INPUTS:
        raise UsageError(f"unknown DEC input {dec_input!r}", f"use one of {', '.join(INPUTS)}")
    shapes, channels = _point_inputs(model, name, points, rec, stored_points, img_size)
    if dec_input == "image":
        channels = {p: image_channels(model) for p in points}
    prefix = _insert_blocks(model, points, channels, settings, rec, mode, dec_input)
    resolved = replace(rec, input=dec_input).to_dict()
    resolved.update(at=points, mode=mode, dec=settings.to_dict(),
                    points=[{"path": p, "layout": rec.layout, "in_channels": channels[p],
                             "shape": list(shapes.get(p) or [])[1:], "prefix_tokens": prefix} for p in points])
    set_info(model, replace(info, dec=True, recipe=resolved))
    return model


# --------------------------------------------------------------------------- parameter groups


def dec_modules(model: nn.Module) -> list[DEC]:
    """The DEC modules inside ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, DEC)]


def dec_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the DEC modules (for their own optimizer group)."""
    seen: set[int] = set()
    out = []
    for m in dec_modules(model):
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All parameters that are not in a DEC module."""
    dec_ids = {id(p) for p in dec_parameters(model)}
    return [p for p in model.parameters() if id(p) not in dec_ids]


def count_parameters(params: Iterable[nn.Parameter]) -> int:
    return int(sum(p.numel() for p in params))


def insertion_table(model: nn.Module) -> list[dict[str, Any]]:
    """One row per insertion point: path, layout, feature shape, DEC parameter count."""
    rows = []
    points = {p["path"]: p for p in (info_of(model).recipe or {}).get("points", [])}
    for name, mod in model.named_modules():
        if isinstance(mod, DECBlock):
            p = points.get(name, {})
            rows.append({"path": name, "layout": mod.layout, "mode": mod.mode, "shape": p.get("shape"),
                         "in_channels": mod.dec.in_channels, "prefix_tokens": mod.prefix_tokens,
                         "dec_parameters": count_parameters(mod.dec.parameters())})
    return rows
