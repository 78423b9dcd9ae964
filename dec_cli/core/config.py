"""Option files: read ``--config FILE.yaml`` and merge it under the command line.

A config file is a flat YAML mapping of option names (``batch-size`` or
``batch_size``) to values. Precedence, strongest first: options typed on the
command line, the config file, a resumed run's saved options, the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from dec_cli.core.errors import UsageError, first_line


def option_key(name: str) -> str:
    """``--batch-size`` / ``batch-size`` / ``batch_size`` -> ``batch_size``."""
    return name.lstrip("-").replace("-", "_")


def read_config(path: str | Path, allowed: Iterable[str]) -> dict[str, Any]:
    """The options in a YAML file, keyed like the Python parameters; unknown keys are an error."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist", "pass --config FILE.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path} is not valid YAML ({first_line(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must be a mapping of option: value",
                         "for example 'epochs: 5' and 'batch-size: 32', one per line")
    allowed = set(allowed)
    out: dict[str, Any] = {}
    for name, value in data.items():
        key = option_key(str(name))
        if key not in allowed:
            raise UsageError(f"config file {path}: unknown option {name!r}",
                             "allowed: " + ", ".join(sorted(k.replace("_", "-") for k in allowed)))
        out[key] = value
    return out


def merge_options(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Merge option layers, weakest first; a later layer's key replaces an earlier one's."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return merged
