"""The range of local scale factors a random warp may use (``--scale-range LO,HI``).

`ScaleRange` is parsed once where the option enters (the CLI, a config file) and
is valid by construction, so the functions that take one never check it again.
It stays a ``(lo, hi)`` pair: unpacking, indexing, JSON and ``dataclasses.asdict``
see two floats, so every file that records a range keeps its format.
This module has no heavy imports: the CLI parses with it before loading torch.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

# Local scale factors (random warps and zooms) stay within these: beyond them a warp squeezes
# regions to nothing and cannot be inverted in practice.
SCALE_LIMITS = (0.05, 20.0)


class ScaleRangeError(ValueError):
    """A well-formed range whose bounds are not allowed (the message says which rule fails)."""


class _Bounds(NamedTuple):
    lo: float
    hi: float


class ScaleRange(_Bounds):
    """``lo <= 1 <= hi``, both positive, finite and within `SCALE_LIMITS`; `ScaleRangeError` otherwise."""

    __slots__ = ()

    def __new__(cls, lo: float, hi: float) -> "ScaleRange":
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= 1 <= hi):
            raise ScaleRangeError(f"scale range must satisfy 0 < LO <= 1 <= HI; got {lo},{hi}")
        if lo < SCALE_LIMITS[0] or hi > SCALE_LIMITS[1]:
            raise ScaleRangeError(f"scale range must lie within [{SCALE_LIMITS[0]:g}, {SCALE_LIMITS[1]:g}]; "
                                  f"got {lo:g},{hi:g}")
        return super().__new__(cls, lo, hi)

    @classmethod
    def parse(cls, text: str) -> "ScaleRange":
        """``"LO,HI"`` -> range; `ValueError` for text of another shape, `ScaleRangeError` for bad bounds."""
        try:
            lo, hi = (float(part) for part in text.split(","))
        except ValueError:
            raise ValueError(f"scale range must be LO,HI such as 0.75,1.33; got {text!r}") from None
        return cls(lo, hi)

    @classmethod
    def of(cls, value: Any) -> "ScaleRange":
        """A range from a range, ``"LO,HI"`` text or a pair of numbers (a config file's list, a saved run).

        `TypeError` or `ValueError` for another shape, `ScaleRangeError` for bad bounds.
        """
        if isinstance(value, ScaleRange):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        lo, hi = value
        return cls(lo, hi)


DEFAULT_SCALE_RANGE = ScaleRange(0.75, 1.33)
