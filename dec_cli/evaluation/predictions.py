"""``dec evaluate --predictions FILE.csv``: the top-5 classes of every image and warp or zoom, per model.

A timm user looking at failures wants names, not output indices: they come from
the checkpoint's class names, else ``--class-map``, else ImageNet's names
(``timm.data.ImageNetInfo``) for a 1000-output model, else the index itself.
Rows: one per model, image and view, where the view is the clean image
(``warp`` empty) or its i-th random warp (``warp`` i, with its strength); a
zoom-sweep file is its own view and carries its ``zoom`` and ``source``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from dec_cli.core.errors import UsageError
from dec_cli.core.files import atomic_path

TOP = 5
COLUMNS = (["model", "image", "label", "source", "zoom", "warp", "warp_strength"]
           + [f"{kind}{i}" for i in range(1, TOP + 1) for kind in ("class", "p")])


def check_predictions_path(path: Optional[str]) -> None:
    """A usage error (exit 2) unless the predictions file is named ``.csv``."""
    if path is not None and Path(path).suffix.lower() != ".csv":
        raise UsageError(f"--predictions writes CSV; {path!r} does not end in .csv",
                         "for example --predictions predictions.csv")


def top_records(logits: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """The top-5 output indices and softmax probabilities of (..., C) logits, as records ``{prefix}top_*``."""
    probs = logits.detach().float().softmax(dim=-1).cpu()
    p, idx = probs.topk(min(TOP, probs.shape[-1]), dim=-1)
    return {f"{prefix}top_idx": idx.numpy().astype(np.int64), f"{prefix}top_p": p.numpy().astype(np.float64)}


def class_names_for(num_classes: int, class_names: Optional[Sequence[str]], class_map: Optional[str]) -> list[str]:
    """Names of the model's outputs: checkpoint, else class map, else ImageNet's (1000 outputs), else indices."""
    if class_names and len(class_names) == num_classes:
        return list(class_names)
    if class_map:
        from dec_cli.trees.data import read_class_map

        names = read_class_map(class_map)
        if len(names) == num_classes:
            return names
    if num_classes == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(num_classes)]
    return [str(i) for i in range(num_classes)]


def _cells(names: Sequence[str], idx: np.ndarray, p: np.ndarray) -> list[str]:
    cells = []
    for j in range(TOP):
        cells += ([names[int(idx[j])], f"{float(p[j]):.6f}"] if j < len(idx) else ["", ""])
    return cells


def prediction_rows(model: str, samples: Sequence[Any], classes: Sequence[str], records: dict[str, np.ndarray],
                    names: Sequence[str]) -> list[list[str]]:
    """The CSV rows of one model's (gathered, any-order) records; ``classes`` are the data's class folders."""
    rows = []
    order = np.argsort(records["index"], kind="stable")
    for r in order:
        s = samples[int(records["index"][r])]
        label = classes[s.label] if 0 <= s.label < len(classes) else ""
        base = [model, s.rel, label, s.source or "", "" if s.zoom is None else f"{s.zoom:g}"]
        rows.append(base + ["", ""] + _cells(names, records["top_idx"][r], records["top_p"][r]))
        if "wtop_idx" in records:
            strength = records.get("strength")
            for k in range(records["wtop_idx"].shape[1]):
                st = "" if strength is None else f"{float(strength[r][k]):.4f}"
                rows.append(base + [str(k), st] + _cells(names, records["wtop_idx"][r][k], records["wtop_p"][r][k]))
    return rows


def view_records(clean: Any, warped: Optional[Any]) -> dict[str, np.ndarray]:
    """The top-5 records of a batch: ``top_*`` of the clean (B, C) logits, ``wtop_*`` of the (B, K, C) warped."""
    return {**top_records(clean), **({} if warped is None else top_records(warped, "w"))}


def model_rows(model: str, data: Any, records: dict[str, np.ndarray], info: Any,
               class_map: Optional[str]) -> list[list[str]]:
    """The rows of one model (``info``: its `DecInfo`), or none when no image was read."""
    if not len(records.get("index", ())):
        return []
    names = class_names_for(int(info.num_classes), info.class_names, class_map)
    return prediction_rows(model, data.samples, data.classes, records, names)


def write_predictions(rows: Sequence[Sequence[str]], path: str | Path) -> None:
    """Write the header and ``rows`` atomically (the file appears whole or not at all)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
