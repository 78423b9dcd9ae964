"""The train and validation trees of a fine-tuning run, found and scanned, their classes checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from dec_cli.core.display import shorten
from dec_cli.core.errors import UsageError
from dec_cli.trees.data import scan_image_folder


@dataclass
class Splits:
    """The scanned train and validation trees of a fine-tuning run."""

    train: Any  # dec_cli.trees.data.ImageFolderData
    val: Any
    train_dir: Path
    val_dir: Path


def resolve_splits(data: str | Path, val: Optional[str | Path]) -> Splits:
    """Find and scan the train and validation trees; their class folders must agree."""
    root = Path(data)
    if not root.is_dir():
        raise UsageError(f"data directory {root} does not exist", "DATA must hold train/ and val/ ImageFolder trees")
    if (root / "train").is_dir():
        train_dir = root / "train"
    elif val is not None:
        train_dir = root
    else:
        raise UsageError(f"{root} has no train/ folder",
                         "DATA must hold train/ and val/ ImageFolder trees, or pass --val DIR with DATA as the train tree")
    val_dir = Path(val) if val is not None else root / "val"
    if not val_dir.is_dir():
        raise UsageError(f"validation folder {val_dir} does not exist", "add DATA/val/ or pass --val DIR")
    train = scan_image_folder(train_dir)
    valid = scan_image_folder(val_dir)
    for split, where in ((train, train_dir), (valid, val_dir)):
        if not split.samples:  # only bad entries (FIFOs, unreadable folders)
            raise UsageError(f"{where} holds no readable images (first: {split.unreadable[0]['path']}: "
                             f"{split.unreadable[0]['reason']})", "check the files and folder permissions")
    if train.classes != valid.classes:
        only_train = sorted(set(train.classes) - set(valid.classes))
        only_val = sorted(set(valid.classes) - set(train.classes))
        parts = []
        if only_train:
            parts.append("only in train: " + shorten(only_train))
        if only_val:
            parts.append("only in val: " + shorten(only_val))
        raise UsageError(f"classes differ between {train_dir} and {val_dir} ({'; '.join(parts)})",
                         "train/ and val/ need the same class folders")
    return Splits(train, valid, train_dir, val_dir)
