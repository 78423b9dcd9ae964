"""The locally scaled digits benchmark: composites of handwritten digits, each digit at its own scale.

A composite places ``digits`` MNIST digits in separate cells of a square canvas
(reading order gives the label, so ``37`` is a 3 left of a 7) and rescales
each digit independently by a factor drawn log-uniformly from a scale range:
different objects, different scales. ``build_digits`` writes ImageFolder trees
``train/``, ``val/`` and ``test/``, plus ``test-zoom/``: every test composite
re-rendered with all its digits at each fixed factor of a sweep, with a
``manifest.jsonl`` in the format of ``dec warp --zoom``.

Splits draw their source digits from disjoint pools; the pools do not depend
on the seed, so no seed's test digits ever appear in any seed's training set.
Nothing here prints or exits: errors are ``UsageError`` with a hint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from dec_cli.jobs.digitclasses import class_set
from dec_cli.core.errors import UsageError
from dec_cli.warps.scalerange import ScaleRange
from dec_cli.trees.treeformat import MANIFEST_NAME, output_name, write_manifest, zoom_tag

SPLITS = ("train", "val", "test")
ZOOM_DIR = "test-zoom"
COMPOSITES_FILE = "composites.jsonl"
INFO_FILE = "digits.json"
DEFAULT_ZOOM = (0.6, 0.8, 1.0, 1.25, 1.6)
DEFAULT_SCALE_RANGE = ScaleRange(0.6, 1.6)
#: Side of a digit's 28-pixel MNIST box at scale 1, as a fraction of the cell:
#: at scale 1.6 the box just fills its cell, so the default range never clips.
GLYPH_FRACTION = 0.625
#: Fixed seed of the source-digit partition: it never depends on the user's seed.
_PARTITION_SEED = 20250819


@dataclass(frozen=True)
class DigitsConfig:
    """Everything that determines a digits benchmark (with the source npz)."""

    seed: int = 0
    n_train: int = 3000
    n_val: int = 300
    n_test: int = 500
    digits: int = 2
    cell: int = 32
    scale_range: ScaleRange = DEFAULT_SCALE_RANGE
    zoom: tuple[float, ...] = DEFAULT_ZOOM
    classes: int = 20
    #: Scale range of ``train/`` and ``val/`` digits; None: ``scale_range`` for every split.
    train_scale_range: Optional[ScaleRange] = None
    #: The `dec digits --protocol` that chose the defaults (recorded in digits.json unless ``default``).
    protocol: str = "default"

    def __post_init__(self) -> None:
        # A plain (lo, hi) pair from Python goes through ScaleRange's one check (ValueError if out of bounds).
        object.__setattr__(self, "scale_range", ScaleRange.of(self.scale_range))
        if self.train_scale_range is not None:
            object.__setattr__(self, "train_scale_range", ScaleRange.of(self.train_scale_range))

    def counts(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}

    @property
    def canvas(self) -> int:
        """Side of the square composite in pixels."""
        return grid_shape(self.digits)[1] * self.cell

    def split_scale_range(self, split: str) -> ScaleRange:
        """The scale range that ``split``'s digits are drawn from."""
        if split in ("train", "val") and self.train_scale_range is not None:
            return self.train_scale_range
        return self.scale_range


@dataclass
class DigitsResult:
    """What ``build_digits`` wrote."""

    root: Path
    counts: dict[str, int]
    zoom_files: int
    class_names: list[str]
    image_size: int
    source_sha256: str
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"root": str(self.root), "counts": self.counts, "zoom_files": self.zoom_files,
                "classes": self.class_names, "image_size": self.image_size,
                "source_sha256": self.source_sha256, **self.extra}


# --------------------------------------------------------------------------- label set and layout


def class_name(tup: Sequence[int]) -> str:
    return "".join(str(int(d)) for d in tup)


def grid_shape(digits: int) -> tuple[int, int]:
    """(rows, cols) of cells: 2 digits side by side, 3 digits in a 2 x 2 grid (last cell empty)."""
    cols = math.ceil(math.sqrt(digits))
    return math.ceil(digits / cols), cols


def cell_origins(digits: int, cell: int) -> list[tuple[int, int]]:
    """Top-left (y, x) of each digit's cell, in reading order; the cell rows are centred vertically."""
    rows, cols = grid_shape(digits)
    side = cols * cell
    y0 = (side - rows * cell) // 2
    return [(y0 + (p // cols) * cell, (p % cols) * cell) for p in range(digits)]


def glyph_size(scale: float, cell: int) -> int:
    """Side in pixels of a digit's (square) MNIST box rendered at ``scale``."""
    return max(2, int(round(cell * GLYPH_FRACTION * scale)))


def render(glyphs: Sequence[np.ndarray], scales: Sequence[float], cell: int) -> np.ndarray:
    """One composite (uint8, square): glyph ``p`` resized by ``scales[p]`` and centred in cell ``p``.

    A glyph larger than its cell is cropped to the cell, so digits never overlap.
    """
    digits = len(glyphs)
    side = grid_shape(digits)[1] * cell
    canvas = np.zeros((side, side), dtype=np.uint8)
    for (cy, cx), glyph, scale in zip(cell_origins(digits, cell), glyphs, scales):
        size = glyph_size(scale, cell)
        img = np.asarray(Image.fromarray(glyph, mode="L").resize((size, size), Image.BILINEAR))
        off = (cell - size) // 2
        # Source window of the glyph that falls inside the cell, and where it lands.
        s0 = max(0, -off)
        s1 = min(size, cell - off)
        d0 = max(0, off)
        region = canvas[cy + d0: cy + d0 + (s1 - s0), cx + d0: cx + d0 + (s1 - s0)]
        np.maximum(region, img[s0:s1, s0:s1], out=region)
    return canvas


# --------------------------------------------------------------------------- source data


def load_source(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, str]:
    """Read an MNIST-style npz: ``images`` uint8 (N, H, W) and ``labels`` 0..9 (N,); returns them and a sha256."""
    path = Path(path)
    hint = "pass an .npz with arrays 'images' (uint8, N x 28 x 28) and 'labels' (0-9, N)"
    if not path.is_file():
        raise UsageError(f"source {path} does not exist or is not a file", hint)
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            missing = {"images", "labels"} - keys
            if missing:
                raise UsageError(f"{path.name} has no array {', '.join(sorted(missing))} "
                                 f"(found: {', '.join(sorted(keys)) or 'none'})", hint)
            images = data["images"]
            labels = data["labels"]
    except UsageError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UsageError(f"cannot read {path} as an .npz file: {exc}", hint) from None
    if images.dtype != np.uint8 or images.ndim != 3 or min(images.shape[1:], default=0) < 8:
        raise UsageError(f"'images' must be uint8 with shape N x H x W; got {images.dtype} "
                         f"{tuple(images.shape)}", hint)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(f"'labels' must be integers with shape ({images.shape[0]},); got {labels.dtype} "
                         f"{tuple(labels.shape)}", hint)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UsageError(f"'labels' must lie in 0..9; got {int(labels.min())}..{int(labels.max())}", hint)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return images, labels.astype(np.int64), digest


def partition(labels: np.ndarray, config: DigitsConfig) -> dict[str, dict[int, np.ndarray]]:
    """Disjoint pools of source indices per split and digit value, independent of the seed.

    Each value's digits are shuffled once (fixed seed) and cut in proportion
    to the number of digit slots each split needs.
    """
    counts = config.counts()
    total = sum(counts.values())
    rng = np.random.default_rng(_PARTITION_SEED)
    pools: dict[str, dict[int, np.ndarray]] = {s: {} for s in SPLITS}
    for value in range(10):
        idx = rng.permutation(np.flatnonzero(labels == value))
        n = len(idx)
        if n < len(SPLITS):
            raise UsageError(f"the source has {n} images of digit {value}; need at least {len(SPLITS)}",
                             "use a source with every digit 0-9 represented")
        # Cut points proportional to demand, each split getting at least one digit.
        sizes = [max(1, int(round(n * counts[s] / total))) for s in SPLITS]
        sizes[0] = n - sum(sizes[1:])
        if sizes[0] < 1:
            raise UsageError(f"too few images of digit {value} ({n}) for the requested split sizes")
        start = 0
        for split, size in zip(SPLITS, sizes):
            pools[split][value] = np.sort(idx[start:start + size])
            start += size
    return pools


# --------------------------------------------------------------------------- composites


@dataclass(frozen=True)
class Composite:
    """One composite: where it goes, what it shows, at which scales."""

    split: str
    path: str  # relative to the split folder, posix
    label: str
    digits: tuple[int, ...]
    sources: tuple[int, ...]
    scales: tuple[float, ...]

    def to_json(self) -> dict:
        return {"split": self.split, "path": self.path, "label": self.label, "digits": list(self.digits),
                "sources": list(self.sources), "scales": list(self.scales)}


def plan_split(split: str, n: int, pool: dict[int, np.ndarray], classes: list[tuple[int, ...]],
               config: DigitsConfig) -> list[Composite]:
    """The composites of one split: balanced classes, source digits from the split's pool, scales per digit.

    The random stream depends only on the seed and the split name, so building
    one split alone gives exactly what a full build gives.
    """
    stream = int.from_bytes(hashlib.sha256(f"digits\0{split}".encode()).digest()[:4], "little")
    rng = np.random.default_rng([config.seed, stream])
    order = rng.permutation(np.arange(n) % len(classes))
    # Draw each value's digits without replacement, reshuffling when a pool is used up.
    queues: dict[int, list[int]] = {}

    def take(value: int) -> int:
        if not queues.get(value):
            queues[value] = [int(i) for i in rng.permutation(pool[value])]
        return queues[value].pop()

    lo, hi = config.split_scale_range(split)
    width = len(str(max(n - 1, 0)))
    out = []
    for j, k in enumerate(order):
        tup = classes[int(k)]
        sources = tuple(take(v) for v in tup)
        scales = tuple(float(round(math.exp(rng.uniform(math.log(lo), math.log(hi))), 4)) for _ in tup)
        scales = tuple(min(max(s, lo), hi) for s in scales)
        label = class_name(tup)
        out.append(Composite(split, f"{label}/{j:0{max(width, 5)}d}.png", label, tup, sources, scales))
    return out


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="L").save(path, format="PNG", optimize=False, compress_level=6)


def check_config(config: DigitsConfig) -> None:
    """Reject impossible settings with a one-line reason."""
    for split, n in config.counts().items():
        if n < 1:
            raise UsageError(f"--n-{split} must be at least 1; got {n}")
    if config.digits not in (2, 3):
        raise UsageError(f"--digits must be 2 or 3; got {config.digits}")
    if not 8 <= config.cell <= 512:
        raise UsageError(f"--cell must be between 8 and 512 pixels; got {config.cell}")
    if not config.zoom:
        raise UsageError("--zoom needs at least one factor")
    for z in config.zoom:
        if not (math.isfinite(z) and 0 < z <= 4):
            raise UsageError(f"zoom factors must lie in (0, 4]; got {z}")
    if len(set(map(zoom_tag, config.zoom))) != len(config.zoom):
        raise UsageError(f"zoom factors must be distinct; got {','.join(map(zoom_tag, config.zoom))}")
    class_set(config.digits, config.classes)


def parse_zoom(text: str) -> tuple[float, ...]:
    """Parse ``"0.6,0.8,1,1.25,1.6"``."""
    try:
        factors = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--zoom must be a comma-separated list of factors such as 0.6,1,1.6; got {text!r}") from None
    return factors


# --------------------------------------------------------------------------- building


def build_digits(source: str | os.PathLike, dst: str | os.PathLike, config: DigitsConfig = DigitsConfig(), *,
                 splits: Iterable[str] = SPLITS, overwrite: bool = False, limit: Optional[int] = None,
                 progress: Optional[Callable[[int, int], None]] = None) -> DigitsResult:
    """Build the benchmark under ``dst`` (``train/``, ``val/``, ``test/``, ``test-zoom/``).

    ``splits`` limits what is written (the demo builds ``test`` only; the zoom
    sweep comes with ``test``); ``limit`` keeps only the first composites of
    each split (the same files a full build writes). The tree is built beside ``dst`` and renamed
    into place at the end, so ``dst`` is never half-written. ``progress`` is
    called with (done, total) image counts.
    """
    check_config(config)
    splits = tuple(s for s in SPLITS if s in set(splits))
    dst = Path(dst)
    _check_destination(dst, overwrite)
    images, labels, digest = load_source(source)
    classes = class_set(config.digits, config.classes)
    pools = partition(labels, config)
    counts = config.counts()
    plans = {s: plan_split(s, counts[s], pools[s], classes, config)[:limit] for s in splits}
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent))
    except OSError as exc:
        raise UsageError(f"cannot write to {dst.parent}: {exc.strerror or exc}",
                         "choose a writable destination") from None
    try:
        zoom_files = _write_tree(work, plans, images, config, progress)
        info = {"config": config_json(config), "splits": list(splits), "limit": limit,
                "counts": {s: len(p) for s, p in plans.items()},
                "zoom_files": zoom_files, "classes": [class_name(c) for c in classes],
                "image_size": config.canvas, "source_sha256": digest}
        (work / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _move_into_place(work, dst)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise UsageError(f"cannot write the benchmark to {dst}: {exc.strerror or exc}",
                         "check free space and permissions") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return DigitsResult(dst, {s: len(p) for s, p in plans.items()}, zoom_files,
                        [class_name(c) for c in classes], config.canvas, digest)


def _check_destination(dst: Path, overwrite: bool) -> None:
    """``dst`` is absent, empty, or (with ``overwrite``) a tree `build_digits` made; `UsageError` otherwise."""
    if dst.exists() and not dst.is_dir():
        raise UsageError(f"destination {dst} exists and is not a folder")
    if dst.exists() and any(dst.iterdir()):
        if not overwrite:
            raise UsageError(f"destination {dst} already exists and is not empty",
                             "pass --overwrite to replace it, or choose another folder")
        if not (dst / INFO_FILE).is_file():  # --overwrite replaces the whole folder: only one dec digits built
            raise UsageError(f"destination {dst} holds files but no {INFO_FILE}: it is not a tree 'dec digits' "
                             "built, so --overwrite will not replace it", "choose another folder, or empty it first")


def _write_tree(work: Path, plans: dict[str, list[Composite]], images: np.ndarray, config: DigitsConfig,
                progress: Optional[Callable[[int, int], None]]) -> int:
    """Render every planned composite (and, with ``test``, its zoom sweep) under ``work``; the zoom file count."""
    sweep = plans.get("test", [])
    total = sum(len(p) for p in plans.values()) + len(sweep) * len(config.zoom)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    records = []
    for split, plan in plans.items():
        for comp in plan:
            glyphs = [images[i] for i in comp.sources]
            _save_png(render(glyphs, comp.scales, config.cell), work / split / comp.path)
            records.append(comp.to_json())
            tick()
    if "test" in plans:
        lines = []
        for comp in sweep:
            glyphs = [images[i] for i in comp.sources]
            for z in config.zoom:
                rel = output_name(comp.path, zoom=z)
                _save_png(render(glyphs, [z] * len(glyphs), config.cell), work / ZOOM_DIR / rel)
                lines.append(_manifest_entry(comp, rel, z, config))
                tick()
        write_manifest(work / ZOOM_DIR / MANIFEST_NAME, lines, compact=False)
    (work / COMPOSITES_FILE).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return len(sweep) * len(config.zoom) if "test" in plans else 0


def _manifest_entry(comp: Composite, rel: str, factor: float, config: DigitsConfig) -> dict:
    """One ``test-zoom/manifest.jsonl`` line, in the format of ``dec warp --zoom``."""
    return {"src": comp.path, "dst": rel, "seed": config.seed, "kind": "zoom", "zoom": factor, "copy": None,
            "scale_range": None, "grid": None, "rows": None, "knots_x": None, "knots_y": None,
            "center": None, "radius": None, "digit_scales": [factor] * len(comp.digits)}


def _move_into_place(work: Path, dst: Path) -> None:
    """Rename the finished tree onto ``dst`` (replacing an old one only after the new one is complete)."""
    if dst.exists():
        trash = dst.with_name(f".{dst.name}.old.{os.getpid()}")
        os.replace(dst, trash)
        os.replace(work, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(work, dst)


def config_json(config: DigitsConfig) -> dict:
    data = asdict(config)
    data["scale_range"] = list(config.scale_range)
    data["zoom"] = list(config.zoom)
    # Absent rather than null when unset, so a default build stays byte-identical to earlier versions.
    if config.train_scale_range is None:
        del data["train_scale_range"]
    else:
        data["train_scale_range"] = list(config.train_scale_range)
    if config.protocol == "default":
        del data["protocol"]
    return data


def read_composites(root: str | os.PathLike) -> list[dict]:
    """The records of ``composites.jsonl`` (split, path, label, digits, sources, scales)."""
    with open(Path(root) / COMPOSITES_FILE, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
