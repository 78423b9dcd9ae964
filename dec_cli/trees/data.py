"""Image folders: scanning, robust decoding, timm preprocessing and class-to-output mapping.

An ImageFolder tree has one subfolder per class; the class of a file is the
first component of its path relative to the root. A tree written by
``dec warp --zoom`` (or ``dec digits``) carries ``manifest.jsonl``; its zoom
factor and source image are attached to every sample so that accuracy can be
reported per zoom factor and grouped by source image. Decoding never stops a
run: unreadable files are collected with a reason and skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from torch.utils.data import Dataset
from torchvision import transforms

from dec_cli.core.modelinfo import image_channels
from dec_cli.trees.classmap import read_class_map  # noqa: F401  (also imported from here)
from dec_cli.core.errors import UsageError, first_line
from dec_cli.trees.treeformat import IMAGE_EXTENSIONS, MASKS_DIR, is_image_path, read_tree_manifest, zoom_source_name
from dec_cli.trees.treescan import TreeScan, check_regular_file, walk_tree

_WNID = re.compile(r"^n\d{8}$")


# --------------------------------------------------------------------------- scanning

NO_LABEL = -1  # Sample.label of a label-free scan


@dataclass(frozen=True)
class Sample:
    """One image file: where it is, its class, and (in zoom sweeps) its zoom and source image."""

    path: Path
    rel: str  # posix path relative to the root, also the key of its random warps
    label: int  # index into ImageFolderData.classes (NO_LABEL without labels)
    zoom: Optional[float] = None
    source: Optional[str] = None  # the source image a zoom-sweep output was made from


@dataclass
class ImageFolderData:
    """The result of scanning an image tree: an ImageFolder tree, or images without labels."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    zoom_sweep: bool = False
    ignored: list[str] = field(default_factory=list)  # files skipped by extension
    labels: bool = True  # False: no classes; every sample's label is NO_LABEL
    unreadable: list[dict[str, str]] = field(default_factory=list)  # FIFOs, unreadable folders, link loops

    def __len__(self) -> int:
        return len(self.samples)

    def limit(self, n: Optional[int]) -> "ImageFolderData":
        """The first ``n`` samples (in sorted path order); ``None`` keeps all."""
        if n is None:
            return self
        return ImageFolderData(self.root, self.classes, self.samples[:n], self.zoom_sweep, self.ignored,
                               labels=self.labels, unreadable=self.unreadable)

    def zooms(self) -> list[float]:
        """The distinct zoom factors, sorted (empty unless a zoom sweep)."""
        return sorted({s.zoom for s in self.samples if s.zoom is not None})


def scan_image_folder(root: str | Path, labels: Optional[bool] = True) -> ImageFolderData:
    """Scan an image tree in sorted order; bad trees raise ``UsageError``.

    ``labels=True``: ``root/CLASS/.../file.ext``, one subfolder per class.
    ``labels=False``: every image under ``root``, at any depth, without labels.
    ``labels=None``: class folders when there are any, else the images directly
    in ``root`` without labels (a flat folder of photos).
    """
    root = Path(root)
    if not root.exists():
        raise UsageError(f"data directory {root} does not exist", "pass --data DIR with one subfolder per class")
    if not root.is_dir():
        raise UsageError(f"data path {root} is not a directory", "pass --data DIR with one subfolder per class")
    try:
        entries = _visible(root)
    except OSError as exc:
        raise UsageError(f"cannot read data directory {root}: {exc.strerror or exc}", "check its permissions") from None
    records = read_tree_manifest(root)
    masks = [p for p in entries if p.is_dir() and _is_mask_dir(p, records)]
    subdirs = [p for p in entries if p.is_dir() and p not in masks]
    if labels is None:
        labels = bool(subdirs)
    if labels:
        data = _scan_classes(root, subdirs)
    else:
        scan = walk_tree(root, is_image_path, exclude=masks[0].resolve() if masks else None)
        data = _collect(root, [], [(scan, "", NO_LABEL)], labels=False)
    if records is not None:
        _attach_manifest(data, records)
    return data


def _visible(folder: Path) -> list[Path]:
    """The entries of ``folder`` (sorted) whose names do not start with a dot."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _is_mask_dir(folder: Path, records: Optional[list[dict[str, Any]]]) -> bool:
    """`dec warp --masks` puts warped masks in DST/masks/: not part of the tree's images."""
    if folder.name != MASKS_DIR or records is None:
        return False
    return not any(r["dst"].startswith(MASKS_DIR + "/") for r in records)


def _scan_classes(root: Path, class_dirs: list[Path]) -> ImageFolderData:
    """An ImageFolder tree: the class of a file is its top-level folder under ``root``."""
    if not class_dirs:
        has_files = any(p.is_file() for p in _visible(root))
        what = "has no class folders" if has_files else "is empty"
        raise UsageError(f"data directory {root} {what}", "put images in one subfolder per class (ImageFolder layout)")
    scans = []
    for label, class_dir in enumerate(class_dirs):
        try:
            scan = walk_tree(class_dir, is_image_path)
        except OSError as exc:
            scan = TreeScan(bad=[{"path": "", "reason": f"cannot read folder: {exc.strerror or exc}"}])
        scans.append((scan, class_dir.name + "/", label))
    return _collect(root, [d.name for d in class_dirs], scans, labels=True)


def _collect(root: Path, classes: list[str], scans: list[tuple[TreeScan, str, int]], *,
             labels: bool) -> ImageFolderData:
    """Samples from walks of ``root`` (or of its class folders: ``(scan, prefix, label)``);
    other names are listed as ignored and bad entries as unreadable."""
    samples: list[Sample] = []
    ignored: list[str] = []
    unreadable: list[dict[str, str]] = []
    for scan, prefix, label in scans:
        files = sorted(scan.files, key=lambda rel: Path(rel).parts)
        samples += [Sample(root / (prefix + rel), prefix + rel, label) for rel in files]
        ignored += [prefix + rel for rel in scan.others]
        unreadable += [{"path": prefix + b["path"], "reason": b["reason"]} for b in scan.bad]
    if not samples and not unreadable:
        where = "has class folders but no images" if labels else ("has no images" if ignored else "is empty")
        raise UsageError(f"data directory {root} {where}",
                         f"supported extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}")
    return ImageFolderData(root, classes, samples, ignored=ignored, labels=labels, unreadable=unreadable)


def _attach_manifest(data: ImageFolderData, records: list[dict[str, Any]]) -> None:
    """Attach zoom factor and source image from the manifest to the samples it names."""
    rows = {r["dst"]: r for r in records}
    zoom_seen = False
    samples = []
    for s in data.samples:
        row = rows.get(s.rel)
        if row is not None and row.get("kind") == "zoom" and row.get("zoom") is not None:
            zoom_seen = True
            source = str(row.get("src") or zoom_source_name(s.rel))
            samples.append(Sample(s.path, s.rel, s.label, float(row["zoom"]), source))
        else:
            samples.append(s)
    data.samples = samples
    data.zoom_sweep = zoom_seen


# --------------------------------------------------------------------------- decoding


def load_image(path: str | Path) -> Image.Image:
    """Decode any image file to 8-bit RGB: EXIF orientation applied, first frame, alpha on white.

    Raises ``OSError``/``ValueError`` (with a short reason) for files Pillow cannot read, and
    for anything but a regular file (opening a FIFO would block forever).
    """
    check_regular_file(path)
    try:
        with Image.open(path) as img:
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return to_rgb(img)
    except UnidentifiedImageError:
        raise OSError("not an image Pillow can identify") from None
    except Image.DecompressionBombError as exc:
        raise OSError(f"image too large ({exc})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, rescaling 16-bit and float data instead of clipping it."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        else:
            top = 65535.0 if (mode.startswith("I;16") or arr.max() > 255) else 255.0
            arr = arr / top * 255.0
        gray = Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8), "L")
        return gray.convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")




# --------------------------------------------------------------------------- torch dataset


class ImageDataset(Dataset):
    """A ``torch.utils.data.Dataset`` over scanned samples that never raises on a bad file.

    Items are ``(image or None, label, index, error or None)``; pair it with
    :func:`collate_skip`, which drops unreadable items and reports them.
    ``label_map`` turns folder class indices into model output indices.
    """

    def __init__(self, samples: Sequence[Sample], transform: Optional[Callable] = None,
                 label_map: Optional[Sequence[int]] = None):
        self.samples = list(samples)
        self.transform = transform
        self.label_map = list(label_map) if label_map is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        label = self.label_map[sample.label] if self.label_map is not None else sample.label
        try:
            img = load_image(sample.path)
            out = self.transform(img) if self.transform is not None else img
        except Exception as exc:  # any decoder failure is data, not a crash
            return None, label, index, first_line(exc)
        return out, label, index, None


@dataclass
class Batch:
    """A collated batch: images (B, C, H, W) or None if all failed, labels, dataset indices, errors."""

    images: Any
    labels: Any
    indices: Any
    errors: list[tuple[int, str]]


def collate_skip(items: Iterable[tuple]) -> Batch:
    """Stack the readable items of a batch; unreadable ones come back as ``(index, reason)``."""
    good = [it for it in items if it[3] is None]
    errors = [(int(it[2]), str(it[3])) for it in items if it[3] is not None]
    if not good:
        empty = torch.zeros(0, dtype=torch.long)
        return Batch(None, empty, empty, errors)
    images = torch.stack([it[0] for it in good])
    labels = torch.tensor([int(it[1]) for it in good], dtype=torch.long)
    indices = torch.tensor([int(it[2]) for it in good], dtype=torch.long)
    return Batch(images, labels, indices, errors)


# --------------------------------------------------------------------------- preprocessing


def data_config(model: Any, img_size: Optional[int] = None) -> dict[str, Any]:
    """timm's evaluation data config for ``model``; ``img_size`` overrides the input size.

    Without ``img_size`` the size a checkpoint was trained at (``dec_info["img_size"]``)
    wins over timm's default: convolutional nets accept any size, so timm cannot know it.
    """
    if img_size is None:
        img_size = (getattr(model, "dec_info", None) or {}).get("img_size")

    cfg = dict(resolve_data_config(model=model))
    chans = input_channels(model)
    if chans == 1 and cfg["input_size"][0] != 1:
        # timm's config says RGB even for in_chans=1 models: feed gray, with averaged statistics.
        cfg["input_size"] = (1, *cfg["input_size"][1:])
        cfg["mean"] = (float(sum(cfg["mean"])) / len(cfg["mean"]),)
        cfg["std"] = (float(sum(cfg["std"])) / len(cfg["std"]),)
    if img_size is not None:
        if img_size < 8:
            raise UsageError(f"--img-size must be at least 8; got {img_size}")
        cfg["input_size"] = (cfg["input_size"][0], int(img_size), int(img_size))
    return cfg


def input_channels(model: Any) -> int:
    """Channels of the model's input image (`dec_cli.core.modelinfo.image_channels`)."""
    return image_channels(model)


def eval_transform(model: Any, img_size: Optional[int] = None) -> Callable:
    """Resize, centre-crop, to-tensor and normalize as timm would evaluate ``model``.

    Images arrive as RGB (see :func:`load_image`); a one-channel model gets them as gray.
    """
    cfg = data_config(model, img_size)
    transform = create_transform(**cfg, is_training=False)
    if cfg["input_size"][0] == 1:
        return transforms.Compose([transforms.Grayscale(1), transform])
    return transform


# --------------------------------------------------------------------------- classes -> model outputs


def class_to_output(classes: Sequence[str], *, num_classes: int, class_names: Optional[Sequence[str]] = None,
                    class_map: Optional[str | Path] = None, model_name: str = "model") -> tuple[list[int], str]:
    """Map folder classes to model output indices; returns (mapping, how).

    Order of preference: ``--class-map FILE``; the checkpoint's class names;
    sorted WordNet ids for 1000-class ImageNet models when the folders are
    WordNet ids; otherwise folder ``i`` (sorted) is output ``i``, which needs
    the counts to match. Any mismatch raises ``UsageError`` (exit code 2).
    """
    names: Optional[list[str]] = None
    how = ""
    if class_map is not None:
        names, how = read_class_map(class_map), "class-map"
    elif class_names:
        names, how = list(class_names), "checkpoint"
    elif num_classes == 1000 and all(_WNID.match(c) for c in classes):
        names, how = list(ImageNetInfo().label_names()), "wordnet"
    if names is not None:
        if len(names) > num_classes:
            raise UsageError(f"{how} names {len(names)} classes but {model_name} has {num_classes} outputs",
                             "pass a --class-map FILE that matches the model")
        index = {name: i for i, name in enumerate(names)}
        missing = [c for c in classes if c not in index]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise UsageError(f"{len(missing)} class folder(s) unknown to {model_name}: {shown}",
                             "rename the folders to the model's class names or pass --class-map FILE")
        return [index[c] for c in classes], how
    if len(classes) != num_classes:
        raise UsageError(f"the data has {len(classes)} class folders but {model_name} has {num_classes} outputs",
                         "pass --class-map FILE, or use a model fine-tuned on these classes")
    return list(range(len(classes))), "sorted-folders"
