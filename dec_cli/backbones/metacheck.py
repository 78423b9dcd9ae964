"""Type and range checks of a checkpoint's ``dec`` metadata, which is untrusted input.

A crafted or damaged header (a number where a name belongs, a billion classes, a
list where an object belongs) must give one ``error:`` line, not a traceback or
an attempt to allocate terabytes: `check_metadata` runs before `dec info` renders
a header and before a model is built from one. The DEC settings' own ranges are
checked by `dec_cli.canon.canonicalizer.DECSettings`; that the stored insertion points
are those the recipe resolves to, by `check_points`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from dec_cli.core.errors import DecError

MAX_CLASSES = 1_000_000
MAX_IMG_SIZE = 65_536
MAX_KWARG_INT = 1_000_000  # a timm model argument (depth, width, classes) beyond this cannot be built here
_OPTIONAL_OBJECTS = ("model_kwargs", "recipe", "dec_settings", "parameters", "provenance")


def _damaged(path: Path, what: str) -> DecError:
    return DecError(f"{path}: checkpoint metadata {what}", "the file is damaged or was not written by dec")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bounded_int(info: Mapping[str, Any], key: str, low: int, high: int, path: Path) -> None:
    value = info.get(key)
    if value is not None and not (_is_int(value) and low <= value <= high):
        raise _damaged(path, f"has {key} {str(value)[:40]!r}, not a whole number in {low}..{high:,}")


def check_metadata(info: Mapping[str, Any], path: Path) -> None:
    """A `DecError` naming the first field of ``info`` with a wrong type or an impossible value."""
    name = info.get("model_name")
    if not isinstance(name, str) or not name or len(name) > 200:
        raise _damaged(path, "names no timm model (model_name is not a short text)")
    for key in _OPTIONAL_OBJECTS:
        if info.get(key) is not None and not isinstance(info[key], dict):
            raise _damaged(path, f"has a {key} that is not a JSON object")
    _bounded_int(info, "num_classes", 0, MAX_CLASSES, path)
    _bounded_int(info, "img_size", 1, MAX_IMG_SIZE, path)
    if info.get("dec") is not None and not isinstance(info["dec"], bool):
        raise _damaged(path, "has a 'dec' flag that is not true or false")
    names = info.get("class_names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _damaged(path, "has class_names that are not a list of names")
        if info.get("num_classes") and len(names) != info["num_classes"]:
            raise _damaged(path, f"lists {len(names)} class names for {info['num_classes']} outputs")
    for key, value in (info.get("model_kwargs") or {}).items():
        if _is_int(value) and abs(value) > MAX_KWARG_INT:
            raise _damaged(path, f"has model argument {key}={value}, more than any model takes")
    _check_recipe(info.get("recipe"), path)


def _check_recipe(recipe: Optional[Mapping[str, Any]], path: Path) -> None:
    if recipe is None:
        return
    points = recipe.get("points", [])
    if not isinstance(points, list) or not all(isinstance(p, dict) and isinstance(p.get("path"), str)
                                               for p in points):
        raise _damaged(path, "has recipe points that are not a list of {path: ...} objects")
    if recipe.get("dec") is not None and not isinstance(recipe["dec"], dict):
        raise _damaged(path, "has DEC settings that are not a JSON object")


def check_points(stored: Optional[Mapping[str, Any]], resolved: Optional[Mapping[str, Any]], path: Path,
                 model_name: str) -> None:
    """The insertion points and layouts a checkpoint lists must be those its recipe resolves to."""
    if not stored or not isinstance(stored.get("points"), list) or not stored["points"]:
        return
    want = [(p.get("path"), p.get("layout")) for p in stored["points"]]
    have = [(p.get("path"), p.get("layout")) for p in (resolved or {}).get("points", [])]
    if want != have:
        shown = ", ".join(f"{p} ({layout})" for p, layout in want)
        raise DecError(f"{path}: its recipe lists insertion points {shown} that {model_name} does not have as listed",
                       "the metadata does not match the weights; re-export the checkpoint with dec retrofit")
