"""Fine-tuning of DEC checkpoints and plain timm models: one process or torchrun/DDP, resumable.

The loop trains the backbone and the DEC modules in separate AdamW parameter
groups (``--lr`` and ``--dec-lr``) on a per-step cosine schedule with linear
warmup, with gradient clipping, optional warp augmentation (``--aug-prob``)
and an invariance loss between f(x) and f(S x) (``--eq-weight``). After each
epoch rank 0 writes ``metrics.csv``, ``last.safetensors`` (and
``best.safetensors`` when validation accuracy improves) and ``state.pt``, the
resume state, each through a temporary name and a rename. Every epoch reseeds
all random streams from ``(seed, epoch, rank)``, so a resumed run repeats an
uninterrupted one exactly (on CPU). Nothing here prints: progress goes to an
``on_event`` callback and failures are ``DecError``s.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dec_cli import distributed as dist_utils
from dec_cli.backbone import create_backbone
from dec_cli.canonloss import canon_loss, dec_outputs
from dec_cli.checkpoint import load_model
from dec_cli.config import merge_options
from dec_cli.errors import DecError, UsageError, first_line
from dec_cli.files import atomic_path, remove_stale_temporaries
from dec_cli.memory import TRAIN_ACTIVATIONS, check_batch_fits
from dec_cli.metrics import symmetric_kl
from dec_cli.modelinfo import info_of, input_size, set_info
from dec_cli.randomwarp import MAX_GRID, MAX_ROWS, image_key, key_seed, keyed_warp, random_warp
from dec_cli.scalerange import DEFAULT_SCALE_RANGE, ScaleRange, ScaleRangeError
from dec_cli.warp import Warp, apply_warp

STATE_NAME = "state.pt"
LAST_NAME = "last.safetensors"
BEST_NAME = "best.safetensors"
METRICS_NAME = "metrics.csv"
STATE_FORMAT = 1
METRICS_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_consistency",
                   "lr_backbone", "lr_dec", "images_per_s")

EventFn = Callable[[str, dict], None]


# --------------------------------------------------------------------------- options


@dataclass
class FinetuneConfig:
    """Every option of ``dec finetune`` that shapes the run (what ``--config`` may set)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    dec_lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    dec_warmup_epochs: int = 0
    freeze_backbone: bool = False
    eq_weight: float = 0.0
    canon_weight: float = 0.0
    aug_prob: float = 0.0
    scale_range: ScaleRange = DEFAULT_SCALE_RANGE
    grid: int = 8
    rows: int = 1
    label_smoothing: float = 0.0
    clip_grad: float = 1.0
    amp: bool = False
    compile: bool = False
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    img_size: Optional[int] = None
    num_classes: Optional[int] = None
    val: Optional[str] = None
    weights: Optional[str] = None
    pretrained: bool = False

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "FinetuneConfig":
        """Build from a dict of (possibly YAML-typed) values, coercing and validating each."""
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in options and options[f.name] is not None:
                kwargs[f.name] = _coerce(f.name, f.default, options[f.name])
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr >= 0 and math.isfinite(self.lr), "--lr must be a finite number >= 0"),
            (self.dec_lr >= 0 and math.isfinite(self.dec_lr), "--dec-lr must be a finite number >= 0"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (self.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
            (self.dec_warmup_epochs >= 0, "--dec-warmup-epochs must be >= 0"),
            (self.eq_weight >= 0, "--eq-weight must be >= 0"),
            (self.canon_weight >= 0, "--canon-weight must be >= 0"),
            (0 <= self.aug_prob <= 1, "--aug-prob must lie in [0, 1]"),
            (1 <= self.grid <= MAX_GRID and 1 <= self.rows <= MAX_ROWS,
             f"--grid must lie in 1..{MAX_GRID} and --rows in 1..{MAX_ROWS}"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must lie in [0, 1)"),
            (self.clip_grad >= 0, "--clip-grad must be >= 0 (0 turns clipping off)"),
            (self.workers >= 0, "--workers must be >= 0"),
            (self.num_classes is None or self.num_classes >= 1, "--num-classes must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message, "see 'dec finetune --help'")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["scale_range"] = list(self.scale_range)
        return data


def _coerce(name: str, default: Any, value: Any) -> Any:
    """Turn a command-line or YAML value into the option's type; a bad one is a usage error."""
    flag = "--" + name.replace("_", "-")
    try:
        if name == "scale_range":  # "LO,HI" (command line, config file) or a pair (config file, saved run)
            return ScaleRange.of(value)
        if isinstance(default, bool):
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            if isinstance(value, (bool, int)):
                return bool(value)
            raise ValueError(value)
        if isinstance(default, int) or name in ("img_size", "num_classes"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except ScaleRangeError as exc:  # a well-formed range with bad bounds: say which rule fails
        raise UsageError(f"{flag}: {exc}") from None
    except (TypeError, ValueError):
        raise UsageError(f"{flag}: invalid value {value!r}", "see 'dec finetune --help'") from None


# --------------------------------------------------------------------------- schedule


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


# --------------------------------------------------------------------------- data


@dataclass
class Splits:
    train: Any  # dec_cli.data.ImageFolderData
    val: Any
    train_dir: Path
    val_dir: Path


def resolve_splits(data: str | Path, val: Optional[str | Path]) -> Splits:
    """Find and scan the train and validation trees; their class folders must agree."""
    from dec_cli.data import scan_image_folder

    root = Path(data)
    if not root.is_dir():
        raise UsageError(f"data directory {root} does not exist", "DATA must hold train/ and val/ ImageFolder trees")
    if (root / "train").is_dir():
        train_dir = root / "train"
    elif val is not None:
        train_dir = root
    else:
        raise UsageError(f"{root} has no train/ folder",
                         "DATA must hold train/ and val/ ImageFolder trees, or pass --val DIR with DATA as the train tree")
    val_dir = Path(val) if val is not None else root / "val"
    if not val_dir.is_dir():
        raise UsageError(f"validation folder {val_dir} does not exist", "add DATA/val/ or pass --val DIR")
    train = scan_image_folder(train_dir)
    valid = scan_image_folder(val_dir)
    for split, where in ((train, train_dir), (valid, val_dir)):
        if not split.samples:  # only bad entries (FIFOs, unreadable folders)
            raise UsageError(f"{where} holds no readable images (first: {split.unreadable[0]['path']}: "
                             f"{split.unreadable[0]['reason']})", "check the files and folder permissions")
    if train.classes != valid.classes:
        only_train = sorted(set(train.classes) - set(valid.classes))
        only_val = sorted(set(valid.classes) - set(train.classes))
        parts = []
        if only_train:
            parts.append("only in train: " + _shorten(only_train))
        if only_val:
            parts.append("only in val: " + _shorten(only_val))
        raise UsageError(f"classes differ between {train_dir} and {val_dir} ({'; '.join(parts)})",
                         "train/ and val/ need the same class folders")
    return Splits(train, valid, train_dir, val_dir)


def _shorten(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" ... ({len(names)} in all)" if len(names) > n else "")


# --------------------------------------------------------------------------- model and classes


def prepare_model(ckpt: str, classes: list[str], cfg: FinetuneConfig) -> tuple[nn.Module, bool]:
    """Load CKPT and give it a head for ``classes``; returns (model, whether the head is new).

    The data's classes must equal the checkpoint's (names, or the output count
    for models without names) unless ``--num-classes`` asks for a new head.
    """
    if Path(ckpt).is_file():
        if cfg.weights is not None or cfg.pretrained:
            raise UsageError("--weights/--pretrained apply to timm model names, not to checkpoints",
                             "drop them: the checkpoint holds its own weights")
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
                detail.append("not in the checkpoint: " + _shorten(extra))
            if missing:
                detail.append("missing from the data: " + _shorten(missing))
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


def split_parameters(model: nn.Module, new_head: bool) -> dict[str, list[nn.Parameter]]:
    """Parameters by optimizer group: ``dec``, ``head`` (a new head only) and ``backbone``."""
    from dec_cli.retrofit import dec_parameters

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
    from dec_cli.retrofit import dec_modules

    inside_dec = {id(m) for dec in dec_modules(model) for m in dec.modules()}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inside_dec:
            m.eval()


# --------------------------------------------------------------------------- the run


@dataclass
class EpochStats:
    loss: float = 0.0
    acc: float = 0.0
    images: int = 0
    seconds: float = 0.0
    bad: list = field(default_factory=list)


class Trainer:
    """One fine-tuning run; build with :func:`finetune`."""

    def __init__(self, ckpt: str, data: str, out_dir: Path, cfg: FinetuneConfig, *, state: Optional[dict],
                 command: str, on_event: Optional[EventFn], dist_info):
        self.ckpt, self.data, self.out, self.cfg = ckpt, data, out_dir, cfg
        self.command, self.on_event, self.dist = command, on_event, dist_info
        self.device = dist_info.device
        self.is_main = dist_info.is_main
        self.resume_state = state

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        cfg = self.cfg
        self.splits = resolve_splits(self.data, cfg.val)
        self.classes = list(self.splits.train.classes)
        if self.resume_state is not None:
            saved = json.loads(self.resume_state["class_names"])
            if saved != self.classes:
                raise UsageError(f"the data's classes differ from those of the run in {self.out}",
                                 "resume with the same DATA, or start a new run in another -o folder")
        if cfg.img_size is not None:  # before the model: a ViT's position embedding grows with the size
            check_batch_fits(cfg.batch_size, (3, cfg.img_size, cfg.img_size), self.device,
                             tensors=3 + TRAIN_ACTIVATIONS)
        torch.manual_seed(cfg.seed)
        model, new_head = prepare_model(self.ckpt, self.classes, cfg)
        self.new_head = new_head
        self.weights_conversion = info_of(model).weights_conversion
        groups = split_parameters(model, new_head)
        self.has_dec = bool(groups["dec"])
        if cfg.dec_warmup_epochs and not self.has_dec:
            raise UsageError("--dec-warmup-epochs needs a checkpoint with DEC modules",
                             "retrofit one with 'dec retrofit', or drop --dec-warmup-epochs")
        if cfg.canon_weight > 0 and not self.has_dec:
            raise UsageError("--canon-weight needs a checkpoint with DEC modules",
                             "retrofit one with 'dec retrofit', or drop --canon-weight")
        if cfg.freeze_backbone:
            for p in groups["backbone"]:
                p.requires_grad_(False)
            groups["backbone"] = []
        if not any(groups.values()):
            raise UsageError("nothing to train: the backbone is frozen and the model has no DEC modules",
                             "drop --freeze-backbone, or fine-tune a DEC checkpoint")
        model.to(self.device)
        if self.resume_state is not None:
            try:
                model.load_state_dict(self.resume_state["model"])
            except RuntimeError:
                raise UsageError(f"the run in {self.out} was made from another model than {self.ckpt}",
                                 f"resume with its original CKPT ({self.resume_state.get('ckpt')})") from None
        self.model = model

        from dec_cli.data import ImageDataset, eval_transform
        transform = eval_transform(model, input_size(model, cfg.img_size))
        self.train_set = ImageDataset(self.splits.train.samples, transform)
        self.val_set = ImageDataset(self.splits.val.samples, transform)
        self.train_sampler = dist_utils.train_sampler(self.train_set, seed=cfg.seed)
        # A last, smaller training batch is dropped (a batch of one breaks batch norm), unless that is all there is.
        self.train_loader = self._loader(self.train_set, self.train_sampler,
                                         drop_last=len(self.train_sampler) >= cfg.batch_size)
        self.val_loader = self._loader(self.val_set, dist_utils.eval_sampler(self.val_set))
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        warm = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        backbone_start = min(cfg.dec_warmup_epochs, cfg.epochs) * self.steps_per_epoch
        self.schedules = {
            "backbone": (cfg.lr, warm, backbone_start),
            "head": (cfg.lr, warm, 0),
            "dec": (cfg.dec_lr, warm, 0),
        }
        self.trainable = [p for g in groups.values() for p in g]
        param_groups = []
        for name, params in groups.items():
            decay = [p for p in params if p.ndim > 1]
            no_decay = [p for p in params if p.ndim <= 1]
            for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
                if ps:
                    param_groups.append({"params": ps, "name": name, "weight_decay": wd,
                                         "lr": self.schedules[name][0]})
        self.optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr)
        self.step = 0
        self.start_epoch = 0
        self.best_acc = -1.0
        self.best_epoch = 0
        self.rows: list[dict] = []
        if self.resume_state is not None:
            try:
                self.optimizer.load_state_dict(self.resume_state["optimizer"])
            except (ValueError, KeyError) as exc:
                raise UsageError(f"the optimizer state in {self.out} does not fit these options ({exc})",
                                 "resume with the run's original --freeze-backbone and model") from None
            self.step = int(self.resume_state["step"])
            self.start_epoch = int(self.resume_state["epoch"])
            self.best_acc = float(self.resume_state["best_acc"])
            self.best_epoch = int(self.resume_state["best_epoch"])
            self.rows = [r for r in read_metrics(self.out / METRICS_NAME) if int(r["epoch"]) <= self.start_epoch]

        forward_module: nn.Module = model
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP
            forward_module = DDP(model, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.train_forward = forward_module
        self.eval_forward = model
        if cfg.compile:
            self.train_forward = torch.compile(forward_module)
            self.eval_forward = torch.compile(model)
        self._val_warps = self._make_val_warps()

    def _loader(self, dataset, sampler, drop_last: bool = False):
        from dec_cli.data import collate_skip
        return torch.utils.data.DataLoader(dataset, batch_size=self.cfg.batch_size, sampler=sampler,
                                           num_workers=self.cfg.workers, collate_fn=collate_skip,
                                           pin_memory=self.device.type == "cuda", drop_last=drop_last)

    def _make_val_warps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One warp per validation image, keyed by seed and relative path (same on every epoch and rank)."""
        cfg = self.cfg
        kx, ky = [], []
        for s in self.splits.val.samples:
            w = keyed_warp(cfg.seed, image_key(s.rel, split="val"), grid=cfg.grid, rows=cfg.rows,
                           scale_range=cfg.scale_range)
            kx.append(w.knots_x)
            ky.append(w.knots_y)
        return torch.cat(kx), torch.cat(ky)

    def emit(self, kind: str, **data: Any) -> None:
        if self.is_main and self.on_event is not None:
            self.on_event(kind, data)

    # ------------------------------------------------------------------ training

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp)

    def _seed_epoch(self, epoch: int) -> torch.Generator:
        """Reseed every random stream from (seed, epoch, rank): the key to exact resumes."""
        base = key_seed(self.cfg.seed, f"epoch{epoch}/rank{self.dist.rank}")
        torch.manual_seed(base)
        random.seed(base)
        np.random.seed(base % (2 ** 32))
        if self.device.type == "cuda":
            torch.cuda.manual_seed(base)
        return torch.Generator().manual_seed(key_seed(self.cfg.seed, f"warps{epoch}/rank{self.dist.rank}"))

    def _set_lrs(self) -> dict[str, float]:
        lrs = {}
        for g in self.optimizer.param_groups:
            base, warm, start = self.schedules[g["name"]]
            g["lr"] = base * lr_factor(self.step, self.total_steps, warm, start)
            lrs[g["name"]] = g["lr"]
        return lrs

    def _warp(self, n: int, gen: torch.Generator) -> Warp:
        cfg = self.cfg
        return random_warp(n, grid=cfg.grid, rows=cfg.rows, scale_range=cfg.scale_range,
                           generator=gen).to(self.device)

    def train_epoch(self, epoch: int) -> EpochStats:
        cfg = self.cfg
        gen = self._seed_epoch(epoch)
        if hasattr(self.train_sampler, "set_epoch"):
            self.train_sampler.set_epoch(epoch)
        self.model.train()
        frozen = epoch < cfg.dec_warmup_epochs
        if frozen or cfg.freeze_backbone:
            hold_backbone_norm_statistics(self.model)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        seen = 0
        bad: list = []
        steps = self.steps_per_epoch
        self.emit("epoch_start", epoch=epoch + 1, epochs=cfg.epochs, steps=steps, frozen_backbone=frozen)
        t0 = time.perf_counter()
        shape = None
        for i, batch in enumerate(self.train_loader):
            bad.extend(batch.errors)
            lrs = self._set_lrs()
            if batch.images is None:  # every file of this batch was unreadable: keep DDP in step
                if shape is None:
                    raise DecError("the first training batch has no readable images",
                                   "check the files listed by 'dec evaluate --data DIR'")
                x = torch.zeros(shape, device=self.device)
                y = torch.zeros(shape[0], dtype=torch.long, device=self.device)
                weight = 0.0
            else:
                x = batch.images.to(self.device, non_blocking=True)
                y = batch.labels.to(self.device, non_blocking=True)
                shape = tuple(x.shape)
                weight = 1.0
            # the random draws happen whatever the options, so streams stay aligned
            aug = torch.rand((), generator=gen).item() < cfg.aug_prob
            if aug:
                x = apply_warp(x, self._warp(x.shape[0], gen))
            loss, logits = self.step_loss(x, y, gen)
            # Check before backward: a NaN forward can crash grid_sample's backward on CPU, and
            # every rank must agree to stop (the loss differs per rank; the check is all-reduced).
            if dist_utils.all_reduce_sum((~torch.isfinite(loss.detach())).float()).item() > 0:
                raise self._nan_error(epoch, i)
            (loss * weight).backward()
            if frozen:
                for g in self.optimizer.param_groups:
                    if g["name"] == "backbone":
                        for p in g["params"]:
                            p.grad = None
            with_grad = [p for p in self.trainable if p.grad is not None]
            max_norm = cfg.clip_grad if cfg.clip_grad > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(with_grad, max_norm) if with_grad else torch.zeros(())
            if not torch.isfinite(grad_norm).item():  # gradients are already all-reduced: same on every rank
                raise self._nan_error(epoch, i)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            n = int(y.shape[0]) if weight else 0
            seen += n
            if n:
                loss_sum += loss.detach().double() * n
                correct += (logits.detach().argmax(-1) == y).sum().double()
            if self.is_main and self.on_event is not None:
                elapsed = time.perf_counter() - t0
                self.emit("step", epoch=epoch + 1, step=i + 1, steps=steps,
                          loss=float(loss_sum) / max(seen, 1), acc=float(correct) / max(seen, 1),
                          images_per_s=seen * self.dist.world / max(elapsed, 1e-9), lr=lrs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        sums = dist_utils.all_reduce_sums({"loss": float(loss_sum), "correct": float(correct), "n": float(seen)})
        bad_all = [e for part in dist_utils.all_gather_objects(bad) for e in part]
        n_all = max(sums["n"], 1.0)
        return EpochStats(sums["loss"] / n_all, sums["correct"] / n_all, int(sums["n"]), seconds, bad_all)

    def step_loss(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss of one batch and its clean logits.

        Cross-entropy, plus ``eq_weight`` times the invariance loss between
        ``f(x)`` and ``f(S(x; T))`` and ``canon_weight`` times the
        canonicalization loss of the DEC modules (:mod:`dec_cli.canonloss`),
        both for one random warp ``T`` per image drawn only when either is on.
        """
        cfg = self.cfg
        paired = cfg.eq_weight > 0 or cfg.canon_weight > 0
        with self._autocast(), dec_outputs(self.model) as warps:
            if paired:
                known = self._warp(x.shape[0], gen)
                logits, logits_w = self.train_forward(torch.cat([x, apply_warp(x, known)])).float().chunk(2)
            else:
                logits = self.train_forward(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        if cfg.eq_weight > 0:
            loss = loss + cfg.eq_weight * symmetric_kl(logits, logits_w).mean().float()
        if cfg.canon_weight > 0:
            loss = loss + cfg.canon_weight * canon_loss(warps, known)
        return loss, logits

    def _nan_error(self, epoch: int, index: int) -> DecError:
        last = self.out / LAST_NAME
        kept = (f"the last good checkpoint {last} (epoch {self.start_epoch_done}) is kept"
                if last.exists() and self.start_epoch_done else "no epoch had completed, so nothing was saved")
        return DecError(f"the loss became NaN or infinite at epoch {epoch + 1}, step {index + 1}; "
                        f"training stopped and {kept}",
                        f"lower --lr ({self.cfg.lr:g}) / --dec-lr ({self.cfg.dec_lr:g}) or check the data, "
                        "then rerun with --resume")

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        model = self.model
        model.eval()
        kx, ky = self._val_warps
        loss_sum = correct = consistent = seen = 0.0
        bad = []
        for batch in self.val_loader:
            bad.extend(batch.errors)
            if batch.images is None:
                continue
            x = batch.images.to(self.device, non_blocking=True)
            y = batch.labels.to(self.device, non_blocking=True)
            idx = batch.indices
            warp = Warp.from_knots(kx[idx], ky[idx]).to(self.device)
            xs = apply_warp(x, warp)
            with self._autocast():
                logits, logits_w = self.eval_forward(torch.cat([x, xs])).float().chunk(2)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            pred = logits.argmax(-1)
            correct += float((pred == y).sum())
            consistent += float((pred == logits_w.argmax(-1)).sum())
            seen += int(y.shape[0])
        sums = dist_utils.all_reduce_sums({"loss": loss_sum, "correct": correct, "consistent": consistent,
                                           "n": seen})
        n = max(sums["n"], 1.0)
        if sums["n"] == 0:
            raise DecError(f"no readable images in {self.splits.val_dir}", "check the validation files")
        return {"loss": sums["loss"] / n, "acc": sums["correct"] / n, "consistency": sums["consistent"] / n,
                "bad": [e for part in dist_utils.all_gather_objects(bad) for e in part]}

    # ------------------------------------------------------------------ outputs

    def provenance(self, epoch: int, val_acc: float) -> dict[str, Any]:
        return {"command": self.command, "seed": self.cfg.seed, "data": str(Path(self.data).resolve()),
                "epochs": self.cfg.epochs, "epoch": epoch, "val_acc": val_acc, "base_checkpoint": self.ckpt,
                "finetune": self.cfg.to_dict()}

    def write_epoch(self, epoch_done: int, row: dict, improved: bool) -> None:
        """Write metrics, last/best checkpoints and the resume state (rank 0; all atomic)."""
        from dec_cli.checkpoint import save_model

        last = self.out / LAST_NAME
        _guarded_write(self.out / METRICS_NAME, lambda p: p.write_text(metrics_text(self.rows), encoding="utf-8"))
        _guarded_write(last, lambda p: save_model(self.model, p, **self.provenance(epoch_done, row["val_acc"])))
        if improved:
            _guarded_write(self.out / BEST_NAME, lambda p: shutil.copyfile(last, p))
        state = {
            "format": STATE_FORMAT,
            "epoch": epoch_done,
            "step": self.step,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "options": json.dumps(self.cfg.to_dict()),
            "class_names": json.dumps(self.classes),
            "ckpt": self.ckpt,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
        }
        _guarded_write(self.out / STATE_NAME, lambda p: torch.save(state, p))

    # ------------------------------------------------------------------ main loop

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.start_epoch_done = self.start_epoch
        if self.start_epoch < cfg.epochs:
            self.emit("start", epochs=cfg.epochs, start_epoch=self.start_epoch + 1,
                      steps_per_epoch=self.steps_per_epoch,
                      train_images=len(self.train_set), val_images=len(self.val_set), classes=self.classes,
                      device=str(self.device), world_size=self.dist.world, dec=self.has_dec,
                      new_head=self.new_head, resumed=self.resume_state is not None,
                      weights_conversion=self.weights_conversion)
        bad_files: set = {(f"{split}/{b['path']}", b["reason"])
                          for split, data in (("train", self.splits.train), ("val", self.splits.val))
                          for b in data.unreadable}
        epochs_run = 0
        for epoch in range(self.start_epoch, cfg.epochs):
            epochs_run += 1
            stats = self.train_epoch(epoch)
            val = self.validate()
            bad_files.update(("train/" + self.splits.train.samples[i].rel, r) for i, r in stats.bad)
            bad_files.update(("val/" + self.splits.val.samples[i].rel, r) for i, r in val["bad"])
            lrs = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
            row = {
                "epoch": epoch + 1, "train_loss": stats.loss, "train_acc": stats.acc, "val_loss": val["loss"],
                "val_acc": val["acc"], "val_consistency": val["consistency"],
                "lr_backbone": lrs.get("backbone", 0.0), "lr_dec": lrs.get("dec", 0.0),
                "images_per_s": stats.images / max(stats.seconds, 1e-9),
            }
            improved = val["acc"] > self.best_acc
            if improved:
                self.best_acc, self.best_epoch = val["acc"], epoch + 1
            self.rows.append(row)
            failure = None
            if self.is_main:
                try:
                    self.write_epoch(epoch + 1, row, improved)
                except DecError as exc:
                    failure = (exc.message, exc.hint)
            failure = dist_utils.broadcast_object(failure)  # a failed save stops every rank, not just rank 0
            if failure is not None:
                raise DecError(*failure)
            self.start_epoch_done = epoch + 1
            self.emit("epoch_end", row=row, best=improved, epochs=cfg.epochs)
        return {
            "out_dir": str(self.out),
            "epochs": cfg.epochs,
            "resumed_from_epoch": self.start_epoch if self.resume_state is not None else None,
            "epochs_run": epochs_run,
            "best_epoch": self.best_epoch,
            "best_val_acc": self.best_acc,
            "final": self.rows[-1] if self.rows else None,
            "history": self.rows,
            "checkpoints": {"last": str(self.out / LAST_NAME), "best": str(self.out / BEST_NAME)},
            "metrics_csv": str(self.out / METRICS_NAME),
            "train_images": len(self.train_set),
            "val_images": len(self.val_set),
            "classes": self.classes,
            "dec": self.has_dec,
            "new_head": self.new_head,
            "world_size": self.dist.world,
            "device": str(self.device),
            "bad_files": [{"path": p, "reason": r} for p, r in sorted(bad_files)],
            "options": cfg.to_dict(),
        }


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _guarded_write(target: Path, write: Callable[[Path], Any]) -> None:
    """Write ``target`` atomically; a failure (full disk...) leaves the old file and raises ``DecError``."""
    try:
        with atomic_path(target) as tmp:
            write(tmp)
    except Exception as exc:  # OSError, DecError from save_model, safetensors' own errors
        raise DecError(f"could not write {target}: {first_line(exc)}",
                       "free disk space, then rerun with --resume; files from earlier epochs are intact") from exc


# --------------------------------------------------------------------------- metrics.csv


def metrics_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(METRICS_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (row[k] if k == "epoch" else f"{float(row[k]):.6g}") for k in METRICS_COLUMNS})
    return buf.getvalue()


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.csv (empty when absent)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(fh)]


# --------------------------------------------------------------------------- resume state


def read_state(out_dir: Path) -> Optional[dict]:
    """The resume state in ``out_dir`` (None when there is none); never unpickles code."""
    path = out_dir / STATE_NAME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DecError(f"cannot read the resume state {path}: {first_line(exc)}",
                       "start a new run in another -o folder") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise DecError(f"{path} is not a dec finetune state (format {STATE_FORMAT})",
                       "start a new run in another -o folder")
    return state


def check_out_dir(out_dir: Path, resume: bool) -> Optional[dict]:
    """Refuse to overwrite an earlier run, or to resume none; return its state when resuming."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output {out_dir} exists and is not a directory", "pass -o DIR")
    blocker = next((p for p in out_dir.absolute().parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise UsageError(f"output {out_dir} cannot be made: {blocker} is a file, not a folder", "pass -o DIR")
    state = read_state(out_dir) if out_dir.is_dir() else None
    known = [n for n in (STATE_NAME, LAST_NAME, BEST_NAME, METRICS_NAME) if (out_dir / n).exists()]
    if resume and state is None:  # starting afresh would silently drop the run's options
        raise UsageError(f"--resume: {out_dir} holds no run to continue (no {STATE_NAME})",
                         f"the run stopped before its first epoch was saved: delete {out_dir} and start it again "
                         "without --resume" if known else "drop --resume to start a new run, with all its options")
    if not resume and known:
        raise UsageError(f"{out_dir} already holds a fine-tuning run ({', '.join(known)})",
                         "add --resume to continue it, or choose another -o folder")
    return state


# --------------------------------------------------------------------------- entry point


def finetune(ckpt: str, data: str | Path, out_dir: str | Path, options: Optional[dict[str, Any]] = None, *,
             resume: bool = False, command: str = "", on_event: Optional[EventFn] = None) -> dict[str, Any]:
    """Fine-tune ``ckpt`` on ``data`` into ``out_dir``; returns a JSON-ready summary.

    ``options`` holds the explicitly chosen :class:`FinetuneConfig` fields (command
    line and config file); with ``resume`` they are merged over the run's saved
    options, so ``--resume`` alone continues with the original settings.
    Under torchrun every rank calls this; only rank 0 writes and emits events.
    """
    out = Path(out_dir)
    state = check_out_dir(out, resume)
    saved = json.loads(state["options"]) if state is not None else {}
    cfg = FinetuneConfig.from_options(merge_options(saved, options or {}))
    with dist_utils.process_group(cfg.device) as info:
        if cfg.amp and info.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError("--amp needs bf16 support on this GPU", "drop --amp")
        trainer = Trainer(str(ckpt), str(data), out, cfg, state=state, command=command, on_event=on_event,
                          dist_info=info)
        trainer.setup()
        dist_utils.barrier()  # every rank has checked the inputs before rank 0 writes anything
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(out)
        summary = trainer.run()
        del trainer  # its DistributedDataParallel wrapper holds the process group open
    return summary
