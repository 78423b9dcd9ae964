"""Fine-tuning of DEC checkpoints and plain timm models: one process or torchrun/DDP, resumable.

:func:`finetune` is the entry point: it checks the options and the run folder
(:mod:`dec_cli.training.rundir`), scans the train and validation trees, gives the model
a head for their classes, and hands both to the :class:`~dec_cli.training.trainer.Trainer`.
The options are declared in :mod:`dec_cli.training.finetune_options`, the parameter
groups and learning-rate schedule live in :mod:`dec_cli.training.optimizer`. Nothing
here prints: progress goes to an ``on_event`` callback and failures are
``DecError``s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from dec_cli.core import distributed as dist_utils
from dec_cli.backbones.backbone import create_backbone
from dec_cli.backbones.checkpoint import load_model
from dec_cli.core.config import merge_options
from dec_cli.core.display import shorten
from dec_cli.core.errors import UsageError
from dec_cli.training.finetune_options import FinetuneConfig
from dec_cli.core.limits import check_workers
from dec_cli.core.memory import TRAIN_ACTIVATIONS, check_batch_fits
from dec_cli.core.modelinfo import info_of, input_size, set_info
from dec_cli.warps.randomwarp import MAX_GRID, MAX_ROWS, key_seed
from dec_cli.training.rundir import RunFolder
from dec_cli.training.splits import Splits, resolve_splits
from dec_cli.training.trainer import EventFn, Trainer, TrainInputs
from dec_cli.backbones.weightsource import CHECKPOINT, weights_source


def check_options(cfg: FinetuneConfig) -> None:
    """A usage error naming the first option whose value is out of range."""
    checks = [
        (cfg.epochs >= 1, "--epochs must be at least 1"),
        (cfg.batch_size >= 1, "--batch-size must be at least 1"),
        (cfg.lr >= 0 and math.isfinite(cfg.lr), "--lr must be a finite number >= 0"),
        (cfg.dec_lr >= 0 and math.isfinite(cfg.dec_lr), "--dec-lr must be a finite number >= 0"),
        (cfg.weight_decay >= 0, "--weight-decay must be >= 0"),
        (cfg.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
        (cfg.dec_warmup_epochs >= 0, "--dec-warmup-epochs must be >= 0"),
        (cfg.eq_weight >= 0, "--eq-weight must be >= 0"),
        (cfg.consistency_weight >= 0 and math.isfinite(cfg.consistency_weight),
         "--consistency-weight must be a finite number >= 0"),
        (cfg.canon_weight >= 0, "--canon-weight must be >= 0"),
        (0 <= cfg.aug_prob <= 1, "--aug-prob must lie in [0, 1]"),
        (1 <= cfg.grid <= MAX_GRID and 1 <= cfg.rows <= MAX_ROWS,
         f"--grid must lie in 1..{MAX_GRID} and --rows in 1..{MAX_ROWS}"),
        (0 <= cfg.label_smoothing < 1, "--label-smoothing must lie in [0, 1)"),
        (cfg.clip_grad >= 0, "--clip-grad must be >= 0 (0 turns clipping off)"),
        (cfg.num_classes is None or cfg.num_classes >= 1, "--num-classes must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message, "see 'dec finetune --help'")
    check_workers(cfg.workers)


# --------------------------------------------------------------------------- model and classes


def prepare_model(ckpt: str, classes: list[str], cfg: FinetuneConfig, *,
                  resuming: bool = False) -> tuple[nn.Module, bool]:
    """Load CKPT and give it a head for ``classes``; returns (model, whether the head is new).

    The data's classes must equal the checkpoint's (names, or the output count
    for models without names) unless ``--num-classes`` asks for a new head.
    """
    if resuming and not (cfg.weights or cfg.pretrained or Path(ckpt).is_file()):
        cfg = replace(cfg, random_init=True)  # the run's saved weights replace the starting ones
    source = weights_source(ckpt, is_checkpoint=Path(ckpt).is_file(), weights=cfg.weights,
                            pretrained=cfg.pretrained, random_init=cfg.random_init)
    if source == CHECKPOINT:
        model = load_model(ckpt, device="cpu")
    else:
        model = create_backbone(ckpt, weights=cfg.weights, pretrained=cfg.pretrained, img_size=cfg.img_size)
    info = info_of(model)
    have_names = info.class_names
    have_n = int(info.num_classes or getattr(model, "num_classes", 0) or 0)
    n = len(classes)
    new_head = False
    if cfg.num_classes is not None:
        if cfg.num_classes != n:
            raise UsageError(f"--num-classes {cfg.num_classes} but the data has {n} class folders",
                             f"pass --num-classes {n}")
        if not (have_names and list(have_names) == classes and have_n == n):
            new_head = True
    elif have_names:
        if list(have_names) != classes:
            extra = sorted(set(classes) - set(have_names))
            missing = sorted(set(have_names) - set(classes))
            detail = []
            if extra:
                detail.append("not in the checkpoint: " + shorten(extra))
            if missing:
                detail.append("missing from the data: " + shorten(missing))
            if not detail:
                detail.append("same names in another order")
            raise UsageError(f"the data's classes differ from {ckpt}'s ({'; '.join(detail)})",
                             f"pass --num-classes {n} to train a new classifier head")
    elif have_n != n:
        raise UsageError(f"the data has {n} classes but {ckpt} has {have_n} outputs",
                         f"pass --num-classes {n} to train a new classifier head")
    if new_head:
        torch.manual_seed(key_seed(cfg.seed, "head"))
        model.reset_classifier(n)
        kwargs = info.model_kwargs
        info = replace(info, num_classes=n,
                       model_kwargs={**kwargs, "num_classes": n} if "num_classes" in kwargs else kwargs)
    img_size = info.img_size if cfg.img_size is None else cfg.img_size  # checkpoints remember it, for evaluate
    set_info(model, replace(info, class_names=list(classes), img_size=img_size))
    if not hasattr(model, "num_classes") or model.num_classes != n:
        try:
            model.num_classes = n
        except (AttributeError, TypeError):
            pass
    return model, new_head


# --------------------------------------------------------------------------- entry point


def _prepare_inputs(ckpt: str, data: str, run: RunFolder, cfg: FinetuneConfig, device: torch.device) -> TrainInputs:
    """Scan the data, check it against a resumed run and free memory, and give the model its head."""
    splits = resolve_splits(data, cfg.val)
    classes = list(splits.train.classes)
    run.check_classes(classes)
    if cfg.img_size is not None:  # before the model: a ViT's position embedding grows with the size
        check_batch_fits(cfg.batch_size, (3, cfg.img_size, cfg.img_size), device, tensors=3 + TRAIN_ACTIVATIONS)
    torch.manual_seed(cfg.seed)
    model, new_head = prepare_model(ckpt, classes, cfg, resuming=run.state is not None)
    return TrainInputs(ckpt, data, splits, model, new_head, input_size(model, cfg.img_size))


def finetune(ckpt: str, data: str | Path, out_dir: str | Path, options: Optional[dict[str, Any]] = None, *,
             resume: bool = False, command: str = "", on_event: Optional[EventFn] = None) -> Optional[dict[str, Any]]:
    """Fine-tune ``ckpt`` on ``data`` into ``out_dir``; returns a JSON-ready summary (None on ranks other than 0).

    ``options`` holds the explicitly chosen :class:`FinetuneConfig` fields (command
    line and config file); with ``resume`` they are merged over the run's saved
    options, so ``--resume`` alone continues with the original settings.
    Under torchrun every rank calls this; only rank 0 writes, emits events and reports.
    """
    run = RunFolder(out_dir, resume)
    cfg = FinetuneConfig.from_options(merge_options(run.saved_options(), options or {}))
    check_options(cfg)
    with dist_utils.process_group(cfg.device) as info:
        if cfg.amp and info.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError("--amp needs bf16 support on this GPU", "drop --amp")
        inputs = _prepare_inputs(str(ckpt), str(data), run, cfg, info.device)
        trainer = Trainer(inputs, run, cfg, command=command, on_event=on_event, dist_info=info)
        dist_utils.barrier()  # every rank has checked the inputs before rank 0 writes anything
        if info.is_main:
            run.prepare(options=cfg.to_dict(), classes=trainer.classes, ckpt=str(ckpt))
        summary = trainer.run()
        del trainer  # its DistributedDataParallel wrapper holds the process group open
    return summary if info.is_main else None
