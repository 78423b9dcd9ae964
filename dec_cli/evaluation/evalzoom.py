"""Zoom sweeps without files: `dec evaluate --zoom Z1,Z2,...` zooms the preprocessed batch on the fly.

`plan_sweep` turns a plain image folder into the samples a `dec warp --zoom` tree
of it would hold (``name.z{Z}.ext`` per factor, grouped by source image), each
with the very warp `dec warp` would use: the same `zoom_warp` of the full image,
centred at ``--center`` or on the image's object (``--boxes``, ``--masks``), the
radius fitted the same way. `ZoomSweep.apply` applies those warps to a batch
already resized and cropped for the model, on the batch's device: it samples the
full-image warp through the crop window the preprocessing kept, so the model sees
what it would see after evaluating the warped file, up to the order of the two
resamplings and, where the warp reads from outside the crop (a shrinking zoom
near the crop border), the border pixels instead of the cropped-away ones.
Nothing here prints; bad options raise `UsageError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from dec_cli.trees import images
from dec_cli.trees.data import ImageFolderData, Sample
from dec_cli.core.errors import UsageError
from dec_cli.warps.maps1d import DEFAULT_INVERSE_ITERS, pixel_centres
from dec_cli.trees.objects import OBJECT, ObjectError, load_boxes, object_box, object_disc
from dec_cli.trees.treeformat import output_name
from dec_cli.warps.warp import Warp
from dec_cli.warps.warpinverse import grid_inverse
from dec_cli.trees.warpplan import ZOOM_GRID, ZOOM_ROWS, WarpSettings, match_masks, scan_images
from dec_cli.warps.zoom import zoom_warp


@dataclass(frozen=True)
class ZoomOptions:
    """``--zoom``, ``--center`` (X,Y or ``"object"``), ``--radius`` (None: 0.25, or the box's), ``--boxes``, ``--masks``."""

    zooms: tuple[float, ...]
    center: tuple[float, float] | str | None = None
    radius: Optional[float] = None
    boxes: Optional[str] = None
    masks: Optional[str] = None

    def settings(self) -> WarpSettings:
        """The `dec warp` settings of the same sweep, checked (`UsageError`)."""
        radius = self.radius if self.radius is not None or self.center == OBJECT else WarpSettings.radius
        settings = WarpSettings(zooms=tuple(self.zooms), center=self.center, radius=radius)
        settings.check()
        if self.center == OBJECT and self.boxes is None and self.masks is None:
            raise UsageError("--center object needs the objects: --masks DIR or --boxes FILE",
                             "give masks named like the images, or a JSON/COCO file or VOC folder of boxes")
        if (self.boxes is not None or self.masks is not None) and self.center != OBJECT:
            raise UsageError("--boxes and --masks apply to --center object only", "add --center object")
        return settings


@dataclass
class ZoomSweep:
    """The discs of every source image (full-image centre, radius, size (W, H)) of an on-the-fly sweep."""

    settings: WarpSettings
    discs: dict[str, tuple[tuple[float, float], float, tuple[int, int]]] = field(default_factory=dict)

    def warp(self, sample: Sample) -> Warp:
        """The warp `dec warp --zoom` gives this output."""
        center, radius, (w, h) = self.discs[sample.source]
        return zoom_warp(sample.zoom, center=center, radius=radius, size=(h, w), grid=ZOOM_GRID, rows=ZOOM_ROWS)

    def apply(self, x: torch.Tensor, samples: Sequence[Sample], cfg: dict[str, Any]) -> torch.Tensor:
        """Zoom each preprocessed image of ``x`` (B, C, H, W) by its sample's warp, on ``x``'s device."""
        warps = [self.warp(s) for s in samples]
        knots_x = torch.cat([w.knots_x for w in warps]).to(x.device)
        knots_y = torch.cat([w.knots_y for w in warps]).to(x.device)
        warp = Warp.from_knots(knots_x, knots_y)
        h, w = x.shape[-2:]
        win = torch.tensor([crop_window(self.discs[s.source][2], cfg) for s in samples],
                           dtype=knots_x.dtype, device=x.device)  # (B, 4): x0, y0, x1, y1
        lines_x = win[:, :1] + (win[:, 2:3] - win[:, :1]) * pixel_centres(w, device=x.device)[None]
        lines_y = win[:, 1:2] + (win[:, 3:4] - win[:, 1:2]) * pixel_centres(h, device=x.device)[None]
        gx, gy = grid_inverse(warp, lines_x, lines_y, DEFAULT_INVERSE_ITERS)
        gx = (gx - win[:, 0, None, None]) / (win[:, 2] - win[:, 0])[:, None, None]
        gy = (gy - win[:, 1, None, None]) / (win[:, 3] - win[:, 1])[:, None, None]
        grid = torch.stack([gx, gy], dim=-1) * 2.0 - 1.0
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.to(x.dtype)


def crop_window(size: Sequence[int], cfg: dict[str, Any]) -> tuple[float, float, float, float]:
    """The part (x0, y0, x1, y1, normalized) of an image of ``size`` (W, H) that timm's evaluation
    transform keeps: shorter side resized to ``input / crop_pct``, then the centre crop of ``input``."""
    w, h = size
    ch, cw = cfg["input_size"][-2:]
    pct = float(cfg.get("crop_pct") or 1.0)
    scale = math.floor(ch / pct) if ch == cw and cfg.get("crop_mode", "center") == "center" else None
    if scale is None:  # squash mode (and, approximately, non-square inputs): both sides to input / crop_pct
        rh, rw = math.floor(ch / pct), math.floor(cw / pct)
    elif w <= h:
        rw, rh = scale, int(scale * h / w)
    else:
        rh, rw = scale, int(scale * w / h)
    ox, oy = int(round((rw - cw) / 2.0)), int(round((rh - ch) / 2.0))
    return ox / rw, oy / rh, (ox + cw) / rw, (oy + ch) / rh


def plan_sweep(data: ImageFolderData, options: ZoomOptions) -> tuple[ImageFolderData, ZoomSweep]:
    """The samples of the sweep (image-major, factors in order) and their discs; images whose object
    cannot centre their zoom (or whose size cannot be read) join ``data.unreadable`` with the reason."""
    if data.zoom_sweep:
        raise UsageError(f"--zoom sweeps a plain image folder, but {data.root} is a 'dec warp --zoom' tree",
                         "drop --zoom (the tree carries its sweep), or point --data at the source images")
    settings = options.settings()
    boxes = load_boxes(options.boxes) if options.boxes is not None else None
    masks = _masks_of(data, options.masks)
    sweep = ZoomSweep(settings)
    samples: list[Sample] = []
    bad = list(data.unreadable)
    for s in data.samples:
        try:
            sweep.discs[s.rel] = _disc(s, settings, boxes, masks)
        except (ObjectError, images.ImageReadError, OSError) as exc:
            bad.append({"path": s.rel, "reason": str(exc) if isinstance(exc, ObjectError) else _reason(exc)})
            continue
        samples += [Sample(s.path, output_name(s.rel, zoom=z), s.label, float(z), s.rel) for z in settings.zooms]
    out = replace(data, samples=samples, zoom_sweep=True, unreadable=sorted(bad, key=lambda b: b["path"]))
    return out, sweep


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, images.ImageReadError) else f"cannot read: {getattr(exc, 'strerror', None) or exc}"


def _masks_of(data: ImageFolderData, masks: Optional[str]) -> dict[str, Path]:
    """The mask file of each image (same relative name, any image extension)."""
    if masks is None:
        return {}
    root = Path(masks)
    if not root.is_dir():
        raise UsageError(f"--masks {masks} is not a folder", "give a folder of masks named like the images")
    found = match_masks([s.rel for s in data.samples], scan_images(root).files)
    return {rel: root / m for rel, m in found.items()}


def _disc(s: Sample, settings: WarpSettings, boxes: Optional[dict], masks: dict[str, Path]
          ) -> tuple[tuple[float, float], float, tuple[int, int]]:
    """One image's disc, as `dec warp` chooses it (`ObjectError` when its object cannot centre it)."""
    size = images.image_size(s.path)
    if settings.center != OBJECT:
        return tuple(settings.center or (0.5, 0.5)), settings.radius, size
    page = images.read_image(masks[s.rel]).pages[0] if boxes is None and s.rel in masks else None
    box = object_box(s.rel, boxes, page, size)
    center, radius = object_disc(box, size, settings.zooms, settings.radius)
    return center, radius, size
