"""Cheap checks the command line makes before importing torch (seconds), so a typo answers at once.

Each repeats no library logic: it either calls a torch-free library rule
(`dec_cli.backbones.weightsource`) or tests what the library would find first (a missing
folder), with the same one-line message.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from dec_cli.core.errors import UsageError
from dec_cli.backbones.weightsource import weights_source


def require_data(data: Optional[str], hint: str = "pass --data DIR with one subfolder per class") -> None:
    """A named data folder that does not exist is a usage error (exit 2)."""
    if data is not None and not os.path.exists(data):
        raise UsageError(f"data directory {data} does not exist", hint)


def require_src(src: str) -> None:
    """``dec warp``'s SRC must exist (what `run_warp` says too)."""
    if not os.path.exists(src):
        raise UsageError(f"SRC {src} does not exist", "give a folder of images")


def weights_chosen(model: str, chosen: dict[str, Any]) -> None:
    """`dec_cli.backbones.weightsource`'s rule on a finetune's chosen options (a timm name needs a source of weights)."""
    weights_source(model, is_checkpoint=os.path.isfile(model), weights=chosen.get("weights"),
                   pretrained=bool(chosen.get("pretrained")), random_init=bool(chosen.get("random_init")))


def not_written(bad: list[dict]) -> str:
    """The exit line of a warp with bad files, naming their cause when they share one."""
    reasons = {item["reason"] for item in bad}
    cause = f" ({next(iter(reasons))})" if len(reasons) == 1 else ", each for the reason listed above"
    return f"{len(bad)} file(s) not written{cause}; the rest were written"
