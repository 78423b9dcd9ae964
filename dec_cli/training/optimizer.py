"""What fine-tuning trains and how fast: parameter groups, AdamW, and the per-step learning-rate schedule.

Three groups: the ``backbone`` (``--lr``), a new ``head`` (``--lr``) and the
``dec`` modules (``--dec-lr``); weight decay applies to weight matrices only,
never to biases and norms. Every group follows a linear warmup and a cosine
decay; with ``--dec-warmup-epochs`` the backbone's schedule starts later.
"""

from __future__ import annotations

import math
import torch
from torch import nn

from dec_cli.training.finetune_options import FinetuneConfig
from dec_cli.canon.retrofit import dec_modules, dec_parameters


def lr_factor(step: int, total: int, warmup: int, start: int = 0) -> float:
    """Learning-rate multiplier at optimizer ``step``: 0 before ``start``, linear warmup, then cosine to 0.

    ``warmup`` is capped at a quarter of the steps after ``start`` so that short
    runs still decay.
    """
    if step < start:
        return 0.0
    span = max(total - start, 1)
    warm = min(warmup, span // 4)
    s = step - start
    if s < warm:
        return (s + 1) / (warm + 1)
    progress = (s - warm) / max(span - warm, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def split_parameters(model: nn.Module, new_head: bool) -> dict[str, list[nn.Parameter]]:
    """Parameters by optimizer group: ``dec``, ``head`` (a new head only) and ``backbone``."""
    dec = list(dec_parameters(model))
    dec_ids = {id(p) for p in dec}
    head = []
    if new_head:
        head = [p for p in model.get_classifier().parameters() if id(p) not in dec_ids]
    taken = dec_ids | {id(p) for p in head}
    backbone = [p for p in model.parameters() if id(p) not in taken]
    return {"backbone": backbone, "head": head, "dec": dec}


def hold_backbone_norm_statistics(model: nn.Module) -> None:
    """Put the backbone's batch-norm layers in eval mode (call after ``model.train()``).

    A frozen backbone should come out of training unchanged, running statistics
    included: in train mode batch norm would keep updating them from the
    (warped) training batches. DEC modules keep their own mode.
    """
    inside_dec = {id(m) for dec in dec_modules(model) for m in dec.modules()}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inside_dec:
            m.eval()


class Schedule:
    """AdamW over the parameter groups and their per-step learning rates (``set_lrs`` before each step)."""

    def __init__(self, groups: dict[str, list[nn.Parameter]], cfg: FinetuneConfig, steps_per_epoch: int):
        self.total_steps = steps_per_epoch * cfg.epochs
        warm = int(round(cfg.warmup_epochs * steps_per_epoch))
        backbone_start = min(cfg.dec_warmup_epochs, cfg.epochs) * steps_per_epoch
        self.schedules = {  # group name -> (peak lr, warmup steps, first step)
            "backbone": (cfg.lr, warm, backbone_start),
            "head": (cfg.lr, warm, 0),
            "dec": (cfg.dec_lr, warm, 0),
        }
        param_groups = []
        for name, params in groups.items():
            decay = [p for p in params if p.ndim > 1]
            no_decay = [p for p in params if p.ndim <= 1]
            for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
                if ps:
                    param_groups.append({"params": ps, "name": name, "weight_decay": wd,
                                         "lr": self.schedules[name][0]})
        self.optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr)

    def set_lrs(self, step: int) -> dict[str, float]:
        """Set every group's learning rate for optimizer ``step``; returns them by group name."""
        lrs = {}
        for g in self.optimizer.param_groups:
            base, warm, start = self.schedules[g["name"]]
            g["lr"] = base * lr_factor(step, self.total_steps, warm, start)
            lrs[g["name"]] = g["lr"]
        return lrs

    def current_lrs(self) -> dict[str, float]:
        """The learning rates last set, by group name."""
        return {g["name"]: g["lr"] for g in self.optimizer.param_groups}

    def drop_backbone_grads(self) -> None:
        """Forget the backbone's gradients (while ``--dec-warmup-epochs`` holds it)."""
        for g in self.optimizer.param_groups:
            if g["name"] == "backbone":
                for p in g["params"]:
                    p.grad = None
