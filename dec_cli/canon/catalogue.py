"""``dec models`` without torch: the shipped recipes and how many timm names each covers.

Counting covered names needs timm's model registry, and importing timm takes
seconds (it imports torch). The registry of the installed timm version is
therefore kept as a list of names in ``dec_cli/data/timm-models.txt``, headed by
the timm version it was taken from; it is used only when that version is the
one installed, otherwise timm itself is asked. ``write_timm_snapshot`` renews it.
"""

from __future__ import annotations

import fnmatch
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from importlib.abc import Traversable

AUTO = "auto"
SUMMARY = ("other timm names get an automatic recipe ('auto'): one DEC before the first stage of timm's "
           "feature_info at 1/8 resolution or coarser, with the layout (nchw, nhwc, tokens) and prefix tokens a "
           "dry run shows; --recipe auto forces it")
SNAPSHOT = "timm-models.txt"
_HEADER = "# timm "


def recipe_folder() -> Union[Path, "Traversable"]:
    """Where the built-in recipes are: ``dec_cli/models/`` in an installed wheel, the repository's
    top-level ``models/`` in a source checkout or an editable install (pyproject.toml maps one to the other)."""
    shipped = resources.files("dec_cli") / "models"
    if shipped.is_dir() and any(e.name.endswith(".yaml") for e in shipped.iterdir()):
        return shipped
    return Path(__file__).resolve().parents[2] / "models"


def recipe_dicts() -> list[dict[str, Any]]:
    """The recipes shipped in ``dec_cli/models/`` as plain mappings (the keys of ``Recipe.to_dict``), by name."""
    import yaml

    rows = []
    folder = recipe_folder()
    for entry in folder.iterdir():
        if entry.name.endswith((".yaml", ".yml")):
            data = yaml.safe_load(entry.read_text(encoding="utf-8"))
            patterns, at = data["patterns"], data["at"]
            rows.append({"name": str(data["name"]), "description": str(data.get("description", "")),
                         "patterns": [patterns] if isinstance(patterns, str) else list(patterns),
                         "layout": data["layout"],
                         "at": [a.strip() for a in at.split(",")] if isinstance(at, str) else list(at),
                         "mode": data.get("mode", "canonicalize"), "dec": dict(data.get("dec") or {}),
                         "source": "builtin", "prefix_tokens": data.get("prefix_tokens")})
    return sorted(rows, key=lambda r: r["name"])


def _snapshot_names() -> Optional[list[str]]:
    """The shipped name list, when it was taken from the installed timm version."""
    try:
        text = (resources.files("dec_cli") / "data" / SNAPSHOT).read_text(encoding="utf-8")
        installed = metadata.version("timm")
    except (OSError, metadata.PackageNotFoundError):
        return None
    first, _, rest = text.partition("\n")
    if first.strip() != _HEADER + installed:
        return None
    return rest.split()


def timm_names() -> list[str]:
    """Every architecture name timm registers (fast from the snapshot; from timm when the version differs)."""
    names = _snapshot_names()
    if names is None:
        import timm

        names = timm.list_models()
    return names


def write_timm_snapshot(path: Union[str, Path]) -> Path:
    """Write the installed timm's model names to ``path`` (run when the tested timm version changes)."""
    import timm

    path = Path(path)
    path.write_text(_HEADER + timm.__version__ + "\n" + "\n".join(timm.list_models()) + "\n", encoding="utf-8")
    return path


def recipe_catalogue() -> dict[str, Any]:
    """The built-in recipes, each with the number of timm models it covers, and the automatic recipe."""
    names = timm_names()
    rows = [{**d, "covered_models": covered(d["patterns"], names)} for d in recipe_dicts()]
    return {"recipes": rows, "auto": {"name": AUTO, "covers": "timm names no recipe matches", "description": SUMMARY}}


def covered(patterns: list[str], names: list[str]) -> int:
    """How many of ``names`` match one of the globs (as ``timm.list_models(patterns)`` counts them)."""
    return sum(1 for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))


if __name__ == "__main__":  # python -m dec_cli.canon.catalogue: renew the shipped snapshot
    print(write_timm_snapshot(Path(__file__).resolve().parents[1] / "data" / SNAPSHOT))
