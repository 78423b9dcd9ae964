"""Where each image's object is, for `dec warp --zoom ... --center object`.

A box is ``(x0, y0, x1, y1)`` in pixels of the image as decoded (EXIF orientation
applied), edges not centres: a mask gives the bounding box of its non-zero pixels,
a boxes file gives one box per relative image path (a JSON object of
``[x0, y0, x1, y1]``, or a COCO annotation file whose largest box per image is
taken, or a folder of Pascal VOC XML files, `dec_cli.trees.vocboxes`). `object_disc` turns a box
into the zoom disc that covers it, shrunk near a border so the zoom keeps it in place. Nothing here
prints; a malformed boxes file raises `UsageError`, a box that cannot centre its
image raises `ObjectError` (the caller lists that image as bad).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import torch
from PIL import Image

from dec_cli.trees.boxcheck import check_boxes_file
from dec_cli.core.errors import UsageError
from dec_cli.trees.images import page_to_tensor
from dec_cli.trees.vocboxes import find_box, load_voc_folder
from dec_cli.warps.zoomaxis import fit_radius

__all__ = ["OBJECT", "Box", "ObjectError", "box_area", "default_radius", "find_box", "load_boxes", "mask_box",
           "object_box", "object_disc"]

OBJECT = "object"
# The widest disc we choose: its diameter magnified by the largest factor covers at most this
# much of the short side, the room the zoom engine is tested with (radius 0.25 at factor 1.8).
MAX_ZOOMED_DIAMETER = 0.9
# The narrowest disc: one interval of the zoom's 64-knot grid, the finest it resolves.
MIN_RADIUS = 1 / 64

Box = tuple[float, float, float, float]


class ObjectError(Exception):
    """An image whose object cannot centre its zoom (the message is the reason)."""


def _malformed(path: Path, what: str) -> UsageError:
    return UsageError(f"--boxes {path} is malformed: {what}",
                      'give {"rel/path.jpg": [x0, y0, x1, y1], ...} or a COCO annotation file')


def _numbers(value: Any, path: Path, where: str) -> tuple[float, ...]:
    """Four finite numbers, or the malformed-file error naming ``where``."""
    ok = (isinstance(value, list) and len(value) == 4
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))
    if not ok:
        raise _malformed(path, f"{where} is not a list of 4 numbers")
    return tuple(float(v) for v in value)


def _coco_boxes(data: dict[str, Any], path: Path) -> dict[str, Box]:
    """The largest box of each image of a COCO annotation file (``bbox`` is ``[x, y, w, h]``)."""
    images, annotations = data["images"], data["annotations"]
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise _malformed(path, "'images' and 'annotations' must be lists")
    names: dict[Any, str] = {}
    for i, image in enumerate(images):
        if not (isinstance(image, dict) and isinstance(image.get("id"), (int, str))
                and isinstance(image.get("file_name"), str)):
            raise _malformed(path, f"images[{i}] has no 'id' and 'file_name'")
        names[image["id"]] = PurePosixPath(image["file_name"]).as_posix()
    boxes: dict[str, Box] = {}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), (int, str)) or ann["image_id"] not in names:
            raise _malformed(path, f"annotations[{i}] has no 'image_id' listed in 'images'")
        x, y, w, h = _numbers(ann.get("bbox"), path, f"annotations[{i}].bbox")
        name, box = names[ann["image_id"]], (x, y, x + w, y + h)
        if name not in boxes or box_area(box) > box_area(boxes[name]):
            boxes[name] = box
    return boxes


def load_boxes(path: str | os.PathLike) -> dict[str, Box]:
    """Boxes per relative image path from a JSON mapping, a COCO file or a folder of Pascal VOC XML
    files (`dec_cli.trees.vocboxes`); `UsageError` if malformed. Look a box up with `find_box`."""
    path = Path(path)
    if path.is_dir():
        return load_voc_folder(path)
    check_boxes_file(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read --boxes {path}: {exc.strerror or exc}",
                         "give a JSON file of boxes or a folder of Pascal VOC XML files") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _malformed(path, f"not JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(data, dict):
        raise _malformed(path, "the top level is not a JSON object")
    if "images" in data and "annotations" in data:
        return _coco_boxes(data, path)
    return {PurePosixPath(rel).as_posix(): _numbers(box, path, f"the box of {rel!r}") for rel, box in data.items()}


def box_area(box: Sequence[float]) -> float:
    """Area of a box; 0 for a degenerate one."""
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def mask_box(page: Image.Image, size: Sequence[int]) -> Box:
    """Bounding box of a mask page's non-zero pixels (any band), in pixels of an image of ``size`` (W, H).

    A mask of another size is scaled to the image, as the warp treats it (normalised coordinates).
    Raises `ObjectError` for an all-zero mask.
    """
    nonzero = page_to_tensor(page)[0].ne(0).any(dim=0)
    rows, cols = torch.nonzero(nonzero.any(dim=1)), torch.nonzero(nonzero.any(dim=0))
    if not len(rows):
        raise ObjectError("its mask is empty (no non-zero pixel)")
    mh, mw = nonzero.shape
    sx, sy = size[0] / mw, size[1] / mh
    return (int(cols[0]) * sx, int(rows[0]) * sy, (int(cols[-1]) + 1) * sx, (int(rows[-1]) + 1) * sy)


def object_box(rel: str, boxes: dict[str, Box] | None, mask_page: Image.Image | None, size: Sequence[int]) -> Box:
    """Image ``rel``'s box: from ``boxes`` when given (`find_box`), else from its mask page (`mask_box`);
    `ObjectError` when it has neither."""
    if boxes is not None:
        box = find_box(boxes, rel)
        if box is None:
            raise ObjectError("--boxes has no box for it")
        return box
    if mask_page is None:
        raise ObjectError("it has no readable mask in --masks")
    return mask_box(mask_page, size)


def default_radius(box: Box, size: Sequence[int], max_zoom: float) -> float:
    """Half the box diagonal as a fraction of the short side, clamped to what the zoom allows.

    The upper bound is ``min(0.5, MAX_ZOOMED_DIAMETER / (2 * max_zoom))``, the lower ``MIN_RADIUS``.
    """
    half_diagonal = 0.5 * math.hypot(box[2] - box[0], box[3] - box[1]) / min(size)
    return min(max(half_diagonal, MIN_RADIUS), 0.5, MAX_ZOOMED_DIAMETER / (2 * max_zoom))


def object_disc(box: Box, size: Sequence[int], zooms: Sequence[float],
                radius: float | None = None) -> tuple[tuple[float, float], float]:
    """The zoom centre (normalised x, y) and radius for an object's box in an image of ``size`` (W, H).

    ``radius`` None covers the box (`default_radius`). Either way the radius is then clamped
    (`dec_cli.warps.zoomaxis.fit_radius`) so that every factor of ``zooms`` can keep the centre in place:
    an object near a border gets a smaller disc, never a moving one. Raises `ObjectError` for a
    degenerate box, one that is not inside the image, or one so close to a border that the disc
    would be narrower than `MIN_RADIUS`.
    """
    w, h = size
    x0, y0, x1, y1 = box
    shown = "[" + ", ".join(format(v, "g") for v in box) + "]"
    if x1 <= x0 or y1 <= y0:
        raise ObjectError(f"its box {shown} is degenerate (x1 <= x0 or y1 <= y0)")
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise ObjectError(f"its box {shown} is not inside the {w}x{h} image")
    centre = ((x0 + x1) / 2 / w, (y0 + y1) / 2 / h)
    wanted = default_radius(box, size, max(zooms)) if radius is None else radius
    fitted = fit_radius(zooms, centre, wanted, (h, w))
    if fitted < MIN_RADIUS:
        raise ObjectError(f"its box {shown} lies too close to the border to zoom by "
                          f"{','.join(format(z, 'g') for z in zooms)} in place")
    return centre, fitted
