"""One rule for where a timm-name model's weights come from (``evaluate``, ``finetune``, ``retrofit``).

As in timm's own scripts, weights must be asked for: ``--weights FILE``,
``--pretrained`` (timm's hub weights) or ``--random-init`` (a randomly
initialized network, for tests and from-scratch training). A timm name with
none of them stops with a usage error (exit 2) instead of silently producing a
random model whose near-uniform outputs look perfectly robust. Checkpoints
carry their own weights and take none of the three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from dec_cli.core.errors import UsageError

CHECKPOINT = "checkpoint"
PRETRAINED = "pretrained"
RANDOM = "random-init"
CHOICES_HINT = "pass --pretrained (timm's hub weights), --weights FILE (local weights) or --random-init"


def weights_source(model: str, *, is_checkpoint: bool, weights: Optional[str], pretrained: bool,
                   random_init: bool) -> str:
    """Where ``model``'s weights come from: ``checkpoint``, ``pretrained``, ``random-init`` or the FILE.

    A timm name with no source, or with two, is a `UsageError` (exit 2); so is a
    source given for a checkpoint.
    """
    given = [name for name, on in (("--weights", weights is not None), ("--pretrained", pretrained),
                                   ("--random-init", random_init)) if on]
    if is_checkpoint:
        if given:
            raise UsageError(f"{'/'.join(given)} apply to timm model names, not to checkpoints",
                             "drop them: the checkpoint holds its own weights")
        return CHECKPOINT
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} exclude each other", "give one source of weights")
    if not given:
        raise UsageError(f"timm model {model} needs weights", CHOICES_HINT)
    if weights is not None:
        return str(weights)
    return PRETRAINED if pretrained else RANDOM


def assign_sources(models: Sequence[str], weights: Sequence[str], *, pretrained: bool,
                   random_init: bool) -> list[tuple[str, Optional[str], str]]:
    """``dec evaluate``'s models with (model, its --weights FILE or None, its weights source).

    The i-th ``--weights`` goes to the i-th timm name (checkpoints, existing files, carry their own);
    the other timm names take ``--pretrained`` or ``--random-init``. Usage errors as `weights_source`.
    """
    names = [m for m in models if not Path(m).is_file()]
    if len(weights) > len(names):
        raise UsageError(f"{len(weights)} --weights file(s) but only {len(names)} timm-name MODEL(s)",
                         "checkpoints carry their own weights; give one --weights per timm name")
    if models and not names and (pretrained or random_init):
        weights_source(models[0], is_checkpoint=True, weights=None, pretrained=pretrained, random_init=random_init)
    given = dict(zip(names, weights))
    out = []
    for m in models:
        own = given.get(m) if m in names else None
        fallback = m in names and own is None
        out.append((m, own, weights_source(m, is_checkpoint=m not in names, weights=own,
                                           pretrained=pretrained and fallback, random_init=random_init and fallback)))
    return out
