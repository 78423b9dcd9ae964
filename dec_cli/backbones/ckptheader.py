"""A dec checkpoint's header, read without torch or timm: for ``dec info`` and start-up speed.

A safetensors file starts with an 8-byte little-endian header length and a JSON
header naming every tensor's dtype and shape, plus string metadata (the ``dec``
key holds the checkpoint's own JSON). Reading that is all ``dec info`` needs,
so it answers in a fraction of a second instead of importing torch (seconds).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Union

from dec_cli.core.errors import DecError, UsageError
from dec_cli.backbones.metacheck import check_metadata

FORMAT_VERSION = 1
METADATA_KEY = "dec"
#: A header larger than this is not a safetensors header (the format caps it at 100 MB).
_MAX_HEADER = 100_000_000


def read_header(path: Union[str, Path]) -> dict[str, Any]:
    """The JSON header of a safetensors file; a missing file is a UsageError, a damaged one a DecError."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such checkpoint: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than a safetensors header")
            (length,) = struct.unpack("<Q", head)
            if length > _MAX_HEADER or length > path.stat().st_size - 8:
                raise ValueError("header length beyond the end of the file")
            header = json.loads(f.read(length).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        if 8 + length + _data_length(header) != path.stat().st_size:
            raise ValueError("file size does not match its header: truncated or extended")
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:200]
        raise DecError(f"{path} is not a readable safetensors file ({reason})",
                       "the file is corrupt or truncated, or not a dec checkpoint") from None
    return header


def _data_length(header: dict[str, Any]) -> int:
    """Bytes of tensor data the header describes (the largest end offset)."""
    ends = [int(entry["data_offsets"][1]) for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    return max(ends, default=0)


def read_metadata(path: Union[str, Path]) -> dict[str, Any]:
    """The ``dec`` metadata of a checkpoint, validated (format version, JSON)."""
    meta = read_header(path).get("__metadata__") or {}
    return parse_metadata(meta if isinstance(meta, dict) else {}, Path(path))


def parse_metadata(meta: dict[str, str], path: Path) -> dict[str, Any]:
    """Validate a checkpoint's ``dec`` metadata string and return it as a dict."""
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
    check_metadata(info, path)
    return info


def _stored_values(header: dict[str, Any]) -> dict[str, int]:
    """Numbers stored in the file, in all and in DEC modules (keys with a ``.dec.`` part)."""
    total = dec = 0
    for key, entry in header.items():
        if key == "__metadata__" or not isinstance(entry, dict):
            continue
        n = 1
        for d in entry.get("shape") or []:
            n *= int(d)
        total += n
        if ".dec." in f".{key}":
            dec += n
    return {"total": total, "dec": dec}


def checkpoint_summary(path: Union[str, Path]) -> dict[str, Any]:
    """What a checkpoint holds, from its header only (no model is built): for ``dec info``."""
    header = read_header(path)
    meta = header.get("__metadata__") or {}
    info = parse_metadata(meta if isinstance(meta, dict) else {}, Path(path))
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
        "dec_input": recipe.get("input", "features") if info.get("dec") else None,
        "insertion_points": recipe.get("points") or [],
        "dec_settings": info.get("dec_settings"),
        "parameters": info.get("parameters") or {},
        "stored_values": _stored_values(header),
        "provenance": info.get("provenance") or {},
    }
