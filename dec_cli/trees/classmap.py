"""`--class-map FILE`: class names in model output order, read from an untrusted file.

Formats: a JSON list of names; a JSON object ``{name: index}``; or text with one
name per line (line i is output i), optionally ``name index`` per line. Blank
lines and ``#`` comments are ignored. A file that is not UTF-8 text, larger than
any real class map, or that names a class twice or gives two names one output
is a `UsageError` (exit 2): read silently, it would pair folders with the wrong
outputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from dec_cli.core.errors import UsageError

MAX_BYTES = 16 * 1024 * 1024  # ImageNet-21k's 21,843 names take under 1 MiB
MAX_CLASSES = 1_000_000  # the largest output index a map may name, plus one
_HINT = "pass --class-map FILE (one class name per line)"


def read_class_map(path: str | Path) -> list[str]:
    """Class names in model output order from ``path`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"class map {path} does not exist", _HINT)
    if path.stat().st_size > MAX_BYTES:
        raise UsageError(f"class map {path} is {path.stat().st_size:,} bytes, more than any class map "
                         f"({MAX_BYTES // 2 ** 20} MiB)", _HINT)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"class map {path} is not UTF-8 text (a binary file?)", _HINT) from None
    except OSError as exc:
        raise UsageError(f"cannot read class map {path}: {exc.strerror or exc}", _HINT) from None
    if path.suffix.lower() == ".json":
        return _from_json(path, text)
    return _from_lines(path, text)


def _from_json(path: Path, text: str) -> list[str]:
    def pairs_without_repeats(pairs: list) -> dict:
        keys = [k for k, _ in pairs]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise UsageError(f"class map {path} names {repeated[0]!r} twice", "give each class one output")
        return dict(pairs)

    try:
        obj = json.loads(text, object_pairs_hook=pairs_without_repeats)
    except json.JSONDecodeError as exc:
        raise UsageError(f"class map {path} is not valid JSON ({exc.msg})", _HINT) from None
    if isinstance(obj, list) and all(isinstance(x, str) for x in obj):
        return _unique(path, list(obj))
    if isinstance(obj, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in obj.values()):
        return _names_from_indices(path, obj.items())
    raise UsageError(f"class map {path} must be a list of names or an object of name -> index", _HINT)


def _from_lines(path: Path, text: str) -> list[str]:
    pairs, plain = [], []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            pairs.append((parts[0], int(parts[1])))
        else:
            plain.append(line)
    if pairs and plain:
        raise UsageError(f"class map {path} mixes 'name index' lines with plain names",
                         "use one format: one name per line, or 'name index' per line")
    if pairs:
        return _names_from_indices(path, pairs)
    if not plain:
        raise UsageError(f"class map {path} is empty", _HINT)
    return _unique(path, plain)


def _unique(path: Path, names: list[str]) -> list[str]:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UsageError(f"class map {path} names {name!r} twice", "give each class one output")
        seen.add(name)
    return names


def _names_from_indices(path: Path, items: Iterable[tuple[str, int]]) -> list[str]:
    items = list(items)
    if not items:
        raise UsageError(f"class map {path} is empty", _HINT)
    _unique(path, [name for name, _ in items])
    indices = [idx for _, idx in items]
    if min(indices) < 0 or max(indices) >= MAX_CLASSES:
        raise UsageError(f"class map {path} has an output index outside 0..{MAX_CLASSES - 1}",
                         "indices count the model's outputs from 0")
    names = [""] * (max(indices) + 1)
    for name, idx in items:
        if names[idx]:
            raise UsageError(f"class map {path} gives output {idx} two names ({names[idx]!r}, {name!r})",
                             "give each output one class")
        names[idx] = name
    return names
