"""``--fail-if`` rules (``top1<0.70``), parsed without torch so that a bad rule fails at once (exit 2)."""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from dec_cli.core.errors import UsageError

FAIL_METRICS = {
    "top1": "top-1 accuracy on clean images",
    "top5": "top-5 accuracy on clean images",
    "warped_top1": "top-1 accuracy under random warps",
    "warped_top5": "top-5 accuracy under random warps",
    "inv_error": "mean ||softmax f(x) - softmax f(Sx)||_2",
    "sym_kl": "mean symmetric KL divergence",
    "consistency": "fraction of (image, warp) pairs whose top-1 is unchanged",
    "zoom_top1_min": "lowest top-1 over zoom factors (zoom sweeps)",
    "zoom_consistency_min": "lowest consistency with zoom 1.0 over zoom factors (zoom sweeps)",
    "flip_rate": "probability that top-1 changes between adjacent zoom factors (zoom sweeps)",
    "residual_mean": "mean DEC solver residual (DEC models)",
    "residual_max": "largest DEC solver residual (DEC models)",
    "residual_rel": "largest per-module mean of ||f(z) - z|| / ||f(z)|| on the warp's knots; converged below ~0.05 (DEC models)",
    "canon_error": "canonicalized / received feature distance of an image and its warp (DEC models)",
    "unreadable": "number of unreadable images skipped",
}
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
        "!=": operator.ne}
_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Threshold:
    """A ``--fail-if`` rule: the run fails when ``metric OP value`` holds."""

    expr: str
    metric: str
    op: str
    value: float

    def violated(self, actual: float) -> bool:
        return bool(_OPS[self.op](actual, self.value))


def parse_fail_if(expr: str) -> Threshold:
    """Parse ``"top1<0.70"``; a malformed rule or unknown metric raises ``UsageError`` (exit 2)."""
    match = _EXPR.match(expr)
    if not match:
        raise UsageError(f"cannot parse --fail-if {expr!r}",
                         "write METRIC<VALUE, e.g. 'top1<0.70' or 'inv_error>0.1' (operators < <= > >= == !=)")
    metric, op, value = match.group(1).lower(), match.group(2), float(match.group(3))
    if metric not in FAIL_METRICS:
        raise UsageError(f"unknown metric {metric!r} in --fail-if {expr!r}",
                         f"known metrics: {', '.join(FAIL_METRICS)}")
    return Threshold(expr.strip(), metric, op, value)
