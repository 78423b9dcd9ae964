"""Object boxes from a folder of Pascal VOC XML files (the format of ImageNet's validation boxes).

One ``NAME.xml`` per image; its largest ``<object><bndbox>`` is the image's box.
VOC numbers pixels from 1 and includes ``xmax``, so ``xmin..xmax`` becomes the
edges ``(xmin - 1, xmax)`` (clamped at 0: files that number from 0 work too).
A box is looked up by the image's relative path without its extension, then, if
that is not in the folder, by its file name without extension at the folder's
top (ImageNet keeps the XML files flat while the images sit in class folders).
Nothing here prints; a malformed file raises `UsageError`.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Mapping, Optional

from dec_cli.core.errors import UsageError

Box = tuple[float, float, float, float]
_FIELDS = ("xmin", "ymin", "xmax", "ymax")


def _malformed(path: Path, what: str) -> UsageError:
    return UsageError(f"--boxes: {path} is malformed: {what}",
                      "give Pascal VOC files: <annotation><object><bndbox><xmin>...</bndbox></object>")


def _box_of(path: Path) -> Optional[Box]:
    """The largest box of one VOC file (None when it has no object)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise _malformed(path, f"not XML ({exc})") from None
    except OSError as exc:
        raise UsageError(f"cannot read --boxes file {path}: {exc.strerror or exc}", "check its permissions") from None
    best: Optional[Box] = None
    for i, obj in enumerate(root.iter("object")):
        bnd = obj.find("bndbox")
        if bnd is None:
            raise _malformed(path, f"object {i} has no <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float((bnd.findtext(name) or "").strip()) for name in _FIELDS)
        except ValueError:
            raise _malformed(path, f"object {i}'s <bndbox> lacks a number in xmin, ymin, xmax, ymax") from None
        if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
            raise _malformed(path, f"object {i}'s <bndbox> is not finite")
        box = (max(xmin - 1, 0.0), max(ymin - 1, 0.0), xmax, ymax)
        if best is None or _area(box) > _area(best):
            best = box
    return best


def _area(box: Box) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def load_voc_folder(folder: Path) -> dict[str, Box]:
    """Boxes keyed by the XML files' relative paths without ``.xml`` (files without objects are left out)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".xml" and p.is_file())
    if not files:
        raise UsageError(f"--boxes {folder} holds no .xml files", "give a folder of Pascal VOC files, one per image")
    boxes: dict[str, Box] = {}
    for path in files:
        box = _box_of(path)
        if box is not None:
            boxes[PurePosixPath(path.relative_to(folder).as_posix()).with_suffix("").as_posix()] = box
    return boxes


def find_box(boxes: Mapping[str, Box], rel: str) -> Optional[Box]:
    """The box of image ``rel``: by relative path, by path without extension, then by file stem alone."""
    path = PurePosixPath(rel)
    for key in (rel, path.with_suffix("").as_posix(), path.stem):
        if key in boxes:
            return boxes[key]
    return None
