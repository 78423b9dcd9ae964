"""Checks of a `--boxes` file beyond its syntax (which `dec_cli.trees.objects` parses).

A boxes file larger than any annotation file is refused before it is read, and
one that names none of SRC's images (paths relative to another folder, or the
boxes of another data set) before any work: otherwise every image would be
listed as bad only after the job ran. Boxes for files SRC does not hold are
otherwise ignored, as a COCO file of a larger set is normal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from dec_cli.core.errors import UsageError

MAX_BYTES = 2 * 1024 ** 3  # COCO's instances_train2017.json is 450 MiB


def check_boxes_file(path: str | os.PathLike) -> None:
    """A usage error for a boxes file too large to be one (a missing file is reported by the reader)."""
    path = Path(path)
    size = path.stat().st_size if path.is_file() else 0
    if size > MAX_BYTES:
        raise UsageError(f"--boxes {path} is {size:,} bytes, more than any boxes file ({MAX_BYTES // 2 ** 30} GiB)",
                         'give {"rel/path.jpg": [x0, y0, x1, y1], ...} or a COCO annotation file')


def check_boxes_cover(boxes: Mapping[str, object], images: Iterable[str], path: str | os.PathLike) -> None:
    """A usage error when ``boxes`` names none of ``images`` (relative paths in SRC)."""
    images = list(images)
    from dec_cli.trees.vocboxes import find_box  # VOC boxes are keyed by path without extension or by stem

    if not images or any(find_box(boxes, rel) is not None for rel in images):
        return
    first = next(iter(boxes), None)
    named = f"its first box is for {first!r}" if first is not None else "it holds no boxes"
    raise UsageError(f"--boxes {path} names none of SRC's {len(images)} image(s) ({named}, SRC has {images[0]!r})",
                     "box paths are relative to SRC, with '/' between folders")
