"""``--tta-scales`` factors, parsed and checked without torch (a bad list fails at once, exit 2)."""

from __future__ import annotations

import math
from typing import Sequence

from dec_cli.core.errors import UsageError

#: Largest factor accepted (the crop at 4x keeps a sixteenth of the image).
MAX_SCALE = 4.0
_HINT = "pass distinct factors in (0, 4], e.g. --tta-scales 0.5,0.71,1,1.41,2"


def parse_tta_scales(text: str) -> tuple[float, ...]:
    """Parse ``"0.5,0.71,1,1.41,2"``; a malformed list is a UsageError (exit 2)."""
    try:
        scales = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise UsageError(f"--tta-scales must be a comma-separated list of factors; got {text!r}", _HINT) from None
    check_tta_scales(scales)
    return scales


def check_tta_scales(scales: Sequence[float]) -> None:
    """Distinct factors in (0, 4], at least one; anything else is a UsageError (exit 2)."""
    if not scales:
        raise UsageError("--tta-scales needs at least one factor", _HINT)
    for s in scales:
        if not (math.isfinite(s) and 0 < s <= MAX_SCALE):
            raise UsageError(f"--tta-scales factors must lie in (0, {MAX_SCALE:g}]; got {s:g}", _HINT)
    if len({format(s, "g") for s in scales}) != len(scales):
        raise UsageError(f"--tta-scales factors must be distinct; got {','.join(format(s, 'g') for s in scales)}",
                         _HINT)
