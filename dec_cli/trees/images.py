"""Decode and encode image files without changing what they are: format, size, mode, bit depth.

`read_image` gives the pages of a file (EXIF orientation applied, every page of
a multi-page TIFF or GIF) and the save parameters that reproduce its format;
`warp_page` applies a tensor function to one page and returns a page of the
same mode (palette and bilevel pages use nearest sampling, so indices stay
valid); `write_image` saves pages atomically. Decode failures and
decompression bombs raise `ImageReadError` with a short reason.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence, JpegImagePlugin

from dec_cli.core.errors import first_line
from dec_cli.core.files import atomic_file
from dec_cli.trees.treescan import NotRegularFileError, check_regular_file

# Modes whose pixels are labels (palette indices, bilevel): interpolating them is meaningless.
NEAREST_MODES = frozenset({"P", "PA", "1"})

# Pixel modes we keep as they are, and the numpy dtype Pillow hands out for them.
_SUPPORTED_MODES = frozenset({
    "1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
    "I", "F", "I;16", "I;16L", "I;16B", "I;16N",
})

# 8-bit modes of several bands that Image.merge rebuilds from "L" planes.
_MERGE_MODES = frozenset({"LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "HSV"})

PNG_COMPRESS_LEVEL = 6  # Pillow's default; the benchmark's plain Pillow loop uses the same.


class ImageReadError(Exception):
    """A file with an image extension that cannot be decoded (the message is the reason)."""


@dataclass
class Picture:
    """The decoded pages of one file and what is needed to write them back alike."""

    pages: list[Image.Image]
    format: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the first page, after EXIF orientation."""
        return self.pages[0].size


def read_image(path: str | os.PathLike) -> Picture:
    """Decode every page of ``path`` with EXIF orientation applied.

    Raises `ImageReadError` for corrupt or truncated files, unsupported modes and
    decompression bombs (more pixels than Pillow's ``Image.MAX_IMAGE_PIXELS``), and
    for anything but a regular file (a FIFO would block the read forever).
    """
    _require_regular(path)
    deep = _png16_header(path)
    if deep is not None:
        return Picture([_read_png16(path, deep)], "PNG", {"compress_level": PNG_COMPRESS_LEVEL})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt = im.format or _format_from_suffix(path)
                params = _save_params(im, fmt)
                single = getattr(im, "n_frames", 1) == 1
                pages = []
                for frame in ([im] if single else ImageSequence.Iterator(im)):
                    frame.load()
                    if _orientation(frame) not in (None, 1):
                        pages.append(ImageOps.exif_transpose(frame))
                    else:  # a loaded single frame outlives its file; sequence frames must be copied
                        pages.append(frame if single else frame.copy())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"refused as a decompression bomb ({first_line(exc, 160)})") from None
    except Image.UnidentifiedImageError:
        raise ImageReadError("not a readable image (unidentified format)") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError) as exc:
        raise ImageReadError(f"cannot decode: {first_line(exc, 160)}") from None
    for page in pages:
        if page.mode not in _SUPPORTED_MODES:
            raise ImageReadError(f"unsupported pixel mode {page.mode}")
    if "exif" in pages[0].info:
        params["exif"] = pages[0].info["exif"]
    return Picture(pages, fmt, params)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header only."""
    _require_regular(path)
    with Image.open(path) as im:
        w, h = im.size
        return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)


def _require_regular(path: str | os.PathLike) -> None:
    """`ImageReadError` unless ``path`` is a regular file or a link to one (checked without opening it)."""
    try:
        check_regular_file(path)
    except NotRegularFileError as exc:
        raise ImageReadError(str(exc)) from None


def page_to_tensor(page: Image.Image) -> torch.Tensor:
    """Pixels of one page as a float tensor (1, C, H, W) in the page's own value range."""
    if isinstance(page, Deep16Page):
        return torch.from_numpy(page.array.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)
    arr = np.asarray(page)
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    elif arr.dtype.byteorder == ">" or arr.dtype == np.uint16 or arr.dtype == np.int32:
        arr = arr.astype(np.float64 if arr.dtype == np.int32 else np.float32)
    with warnings.catch_warnings():
        # Pillow's buffer is read-only; we never write into it (the float conversion copies).
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(arr)
    if t.dim() == 2:
        t = t.unsqueeze(-1)
    # One pass, integers -> floats, keeping Pillow's interleaved (channels-last) layout:
    # grid_sample reads it as it is and writes a contiguous NCHW result.
    work = torch.float64 if t.dtype == torch.float64 else torch.float32
    return t.to(work).permute(2, 0, 1).unsqueeze(0)


def tensor_to_page(t: torch.Tensor, like: Image.Image, *, in_range: bool = False) -> Image.Image:
    """A page of ``like``'s mode (and palette, info) from a float tensor (1, C, H, W).

    Values are rounded and clipped to the mode's range; ``in_range=True`` promises
    that 8-bit values already lie in [0, 255] (as any bilinear or nearest resampling
    of the page's own pixels does) and skips the clipping pass.
    """
    if isinstance(like, Deep16Page):
        arr = t[0].permute(1, 2, 0).round().clamp_(0, 65535).to(torch.int32).numpy().astype(np.uint16)
        return Deep16Page(arr, like.mode, dict(like.info))
    mode = like.mode
    if mode in _MERGE_MODES:
        # 8-bit multi-band: round on the planar (C, H, W) result, wrap each plane as an
        # "L" band without copying and let Pillow interleave them (cheaper than a permute).
        planes = _round_to_uint8(t[0], clip=not in_range)
        bands = [Image.frombuffer("L", like.size, plane, "raw", "L", 0, 1) for plane in planes]
        out = Image.merge(mode, bands)
        return _copy_info(out, like)
    hwc = t[0].permute(1, 2, 0)
    if mode == "F":
        data = hwc.to(torch.float32).contiguous().numpy().tobytes()
    elif mode == "I":
        data = hwc.round().clamp_(-(2 ** 31), 2 ** 31 - 1).to(torch.int32).contiguous().numpy().tobytes()
    elif mode.startswith("I;16"):
        data = hwc.round().clamp_(0, 65535).to(torch.int32).numpy().astype(_dtype_16(mode)).tobytes()
    elif mode == "1":
        data = (hwc > 0).to(torch.uint8).mul_(255).contiguous().numpy().tobytes()
        return Image.frombytes("L", like.size, data).convert("1", dither=Image.Dither.NONE)
    else:
        data = _round_to_uint8(hwc, clip=not in_range).tobytes()
    out = Image.frombytes(mode, like.size, data, "raw", _raw_mode(mode))
    if mode in ("P", "PA") and like.palette is not None:
        out.putpalette(like.palette.palette, rawmode=like.palette.mode)
    return _copy_info(out, like)


def _round_to_uint8(t: torch.Tensor, *, clip: bool = True) -> np.ndarray:
    """Round (and clip, unless told the values lie in [0, 255]) a float tensor to a uint8 array.

    Done in numpy: its float-to-uint8 cast is several times faster than torch's
    on CPU, and this runs once per written page. The tensor is left unchanged.
    """
    a = t.detach().cpu().numpy()
    out = np.empty(a.shape, dtype=np.uint8)
    with np.errstate(invalid="ignore"):  # NaN (never produced by sampling real pixels) becomes 0
        np.add(np.clip(a, 0.0, 255.0) if clip else a, 0.5, out=out, casting="unsafe")  # x + 0.5 truncated rounds
    return out


def _copy_info(out: Image.Image, like: Image.Image) -> Image.Image:
    for key in ("transparency", "duration", "loop", "disposal", "background"):
        if key in like.info:
            out.info[key] = like.info[key]
    return out


def warp_page(page: Image.Image, fn: Callable[[torch.Tensor, str], torch.Tensor], *,
              in_range: bool = False) -> Image.Image:
    """Apply ``fn(pixels, sampling_mode)`` to one page; the result has the page's mode and size.

    ``pixels`` is (1, C, H, W) float; ``sampling_mode`` is ``nearest`` for label
    modes (palette, bilevel) and ``bilinear`` otherwise. ``in_range=True`` says
    ``fn`` only blends the page's own values with non-negative weights (bilinear
    or nearest resampling, not bicubic), so 8-bit results need no clipping.
    """
    sampling = "nearest" if page.mode in NEAREST_MODES else "bilinear"
    return tensor_to_page(fn(page_to_tensor(page), sampling), page, in_range=in_range)


def write_image(pages: list[Image.Image], target: str | os.PathLike, fmt: str, params: dict[str, Any],
                *, overwrite: bool = False) -> None:
    """Save ``pages`` (all of them, for multi-page formats) atomically under ``target``."""
    if isinstance(pages[0], Deep16Page):
        with atomic_file(target, overwrite=overwrite) as f:
            f.write(_encode_png16(pages[0], int(params.get("compress_level", PNG_COMPRESS_LEVEL))))
        return
    kwargs = dict(params)
    if len(pages) > 1:
        kwargs.update(save_all=True, append_images=pages[1:])
    with atomic_file(target, overwrite=overwrite) as f:
        pages[0].save(f, format=fmt, **kwargs)


# --------------------------------------------------------------------------- 16-bit colour PNG
# Pillow decodes 16-bit RGB(A) PNGs to 8 bits and cannot write them, so they get
# a small codec of their own: enough of PNG for non-interlaced 16-bit images.

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


@dataclass
class Deep16Page:
    """A 16-bit colour page (H, W, C) uint16 that Pillow cannot hold; mode ``RGB;16`` or ``RGBA;16``."""

    array: np.ndarray
    mode: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return self.array.shape[1], self.array.shape[0]


def _png16_header(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """(width, height, colour type) of a 16-bit colour PNG; None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(33)
    except OSError:
        return None
    if len(head) < 33 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if depth != 16 or colour not in (2, 6):
        return None
    return width, height, colour


def _read_png16(path: str | os.PathLike, header: tuple[int, int, int]) -> Deep16Page:
    width, height, colour = header
    if width * height > (Image.MAX_IMAGE_PIXELS or float("inf")):
        raise ImageReadError(f"refused as a decompression bomb ({width * height} pixels exceed "
                             f"Pillow's limit of {Image.MAX_IMAGE_PIXELS})")
    try:
        array = decode_png16(Path(path).read_bytes())
    except (ValueError, zlib.error, struct.error) as exc:
        raise ImageReadError(f"cannot decode: {first_line(exc, 160)}") from None
    return Deep16Page(array, "RGB;16" if colour == 2 else "RGBA;16")


def decode_png16(data: bytes) -> np.ndarray:
    """Pixels (H, W, C) uint16 of a non-interlaced 16-bit PNG (any colour type without palette)."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None or not idat:
        raise ValueError("PNG without IHDR or IDAT")
    width, height, depth, colour, _, _, interlace = header
    if depth != 16 or colour not in _PNG_CHANNELS or interlace:
        raise ValueError("only non-interlaced 16-bit PNGs are supported here")
    channels = _PNG_CHANNELS[colour]
    bpp, stride = 2 * channels, 2 * channels * width
    raw = zlib.decompressobj().decompress(b"".join(idat))
    if len(raw) < height * (stride + 1):
        raise ValueError("image data is truncated")
    rows = np.frombuffer(raw, np.uint8, count=height * (stride + 1)).reshape(height, stride + 1)
    out = np.empty((height, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            cur = line.copy()
        elif kind == 1:  # Sub: running sum per byte lane, modulo 256
            cur = np.cumsum(line.reshape(width, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:  # Up
            cur = line + prev
        elif kind in (3, 4):  # Average, Paeth: each pixel depends on the one to its left
            cur = np.empty(stride, np.uint8)
            left = np.zeros(bpp, np.int16)
            up_left = np.zeros(bpp, np.int16)
            for i in range(0, stride, bpp):
                up = prev[i:i + bpp].astype(np.int16)
                if kind == 3:
                    pred = (left + up) >> 1
                else:
                    p = left + up - up_left
                    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
                    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
                left = (line[i:i + bpp].astype(np.int16) + pred) & 0xFF
                cur[i:i + bpp] = left
                up_left = up
        else:
            raise ValueError(f"unknown PNG filter type {kind}")
        out[y] = cur
        prev = cur
    return out.view(">u2").reshape(height, width, channels).astype(np.uint16)


def _encode_png16(page: Deep16Page, level: int) -> bytes:
    """A 16-bit RGB(A) PNG of ``page`` (filter Up on every row, zlib at ``level``)."""
    height, width, channels = page.array.shape
    rows = np.ascontiguousarray(page.array.astype(">u2")).view(np.uint8).reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2
    filtered[0, 1:] = rows[0]
    filtered[1:, 1:] = rows[1:] - rows[:-1]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    colour = {3: 2, 4: 6}[channels]
    return (_PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(filtered.tobytes(), level)) + chunk(b"IEND", b""))


def _save_params(im: Image.Image, fmt: str) -> dict[str, Any]:
    """Save parameters that keep a file's format and quality as they were."""
    info = im.info
    params: dict[str, Any] = {}
    for key in ("dpi", "icc_profile"):
        if key in info:
            params[key] = info[key]
    if fmt == "PNG":
        params["compress_level"] = PNG_COMPRESS_LEVEL
        if "transparency" in info:
            params["transparency"] = info["transparency"]
    elif fmt == "JPEG":
        # The source's own quantization tables and chroma subsampling: same quality.
        if getattr(im, "quantization", None):
            params["qtables"] = im.quantization
        sampling = JpegImagePlugin.get_sampling(im)
        if sampling != -1:
            params["subsampling"] = sampling
    elif fmt == "TIFF":
        if info.get("compression") not in (None, "raw"):
            params["compression"] = info["compression"]
    elif fmt == "GIF":
        for key in ("duration", "loop", "transparency"):
            if key in info:
                params[key] = info[key]
    elif fmt == "WEBP":
        params["lossless"] = bool(info.get("lossless", False))
        params["quality"] = 90
    return params


def _orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(0x0112)
    except Exception:  # a broken EXIF block must not make the whole image unreadable
        return None


def _format_from_suffix(path: str | os.PathLike) -> str:
    ext = Path(path).suffix.lower()
    return Image.registered_extensions().get(ext, "PNG")


def _dtype_16(mode: str) -> np.dtype:
    return np.dtype(">u2") if mode == "I;16B" else np.dtype("<u2")


def _raw_mode(mode: str) -> str:
    """Pillow's raw mode for the bytes our tensors produce (native-order 16-bit, etc.)."""
    return {"I;16N": "I;16", "I;16L": "I;16", "I": "I", "F": "F"}.get(mode, mode)


