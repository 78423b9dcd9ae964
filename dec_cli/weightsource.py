"""One rule for where a timm-name model's weights come from (``evaluate``, ``finetune``, ``retrofit``).

As in timm's own scripts, weights must be asked for: ``--weights FILE``,
``--pretrained`` (timm's hub weights) or ``--random-init`` (a randomly
initialized network, for tests and from-scratch training). A timm name with
none of them stops with a usage error (exit 2) instead of silently producing a
random model whose near-uniform outputs look perfectly robust. Checkpoints
carry their own weights and take none of the three.
"""

from __future__ import annotations

from typing import Optional

from dec_cli.errors import UsageError

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
