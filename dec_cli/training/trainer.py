"""The fine-tuning loop: epochs of training steps, validation, and the run folder written after each.

One process or one torchrun rank each; every epoch reseeds all random streams
from ``(seed, epoch, rank)``, so a resumed run repeats an uninterrupted one
exactly (on CPU). A NaN or infinite loss or gradient stops every rank at the
same step. Nothing here prints: progress goes to an ``on_event`` callback
(rank 0 only) and failures are ``DecError``s.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dec_cli.core import distributed as dist_utils
from dec_cli.canon.canonloss import canon_loss, dec_outputs
from dec_cli.trees.data import ImageDataset, collate_skip, eval_transform
from dec_cli.core.errors import DecError, UsageError
from dec_cli.training.finetune_options import FinetuneConfig
from dec_cli.training.splits import Splits
from dec_cli.evaluation.metrics import symmetric_kl
from dec_cli.core.modelinfo import info_of
from dec_cli.training.optimizer import Schedule, hold_backbone_norm_statistics, split_parameters
from dec_cli.warps.randomwarp import image_key, key_seed, keyed_warp, random_warp
from dec_cli.training.rundir import Progress, RunFolder
from dec_cli.warps.warp import Warp
from dec_cli.warps.apply import apply_warp


EventFn = Callable[[str, dict], None]


@dataclass
class EpochStats:
    """One epoch of training over all ranks: mean loss and accuracy, images, seconds, unreadable files."""

    loss: float = 0.0
    acc: float = 0.0
    images: int = 0
    seconds: float = 0.0
    bad: list = field(default_factory=list)


@dataclass
class TrainInputs:
    """What :func:`dec_cli.jobs.finetune.finetune` prepared: the data splits and the model with its head."""

    ckpt: str
    data: str
    splits: Splits
    model: nn.Module
    new_head: bool
    img_size: Optional[int]  # None: the model's timm data config decides


class Trainer:
    """One fine-tuning run on prepared inputs; ``run()`` trains the remaining epochs."""

    def __init__(self, inputs: TrainInputs, run: RunFolder, cfg: FinetuneConfig, *, command: str,
                 on_event: Optional[EventFn], dist_info: dist_utils.DistInfo):
        self.inputs, self.folder, self.cfg = inputs, run, cfg
        self.command, self.on_event, self.dist = command, on_event, dist_info
        self.device = dist_info.device
        self.splits = inputs.splits
        self.classes = list(self.splits.train.classes)
        self.model = inputs.model
        self.has_dec = self._set_up_parameters()
        self._set_up_data()
        self.schedule = Schedule(self.groups, cfg, self.steps_per_epoch)
        self.progress = run.restore(self.model, self.schedule.optimizer, inputs.ckpt)
        self.start_epoch = self.progress.epoch
        self.rows = run.rows_until(self.start_epoch)
        self._set_up_forward()
        self._val_warps = self._make_val_warps()

    # ------------------------------------------------------------------ set-up

    def _set_up_parameters(self) -> bool:
        """Choose the trained parameters (``self.groups``, ``self.trainable``); returns whether there is a DEC."""
        cfg = self.cfg
        groups = split_parameters(self.model, self.inputs.new_head)
        has_dec = bool(groups["dec"])
        if cfg.dec_warmup_epochs and not has_dec:
            raise UsageError("--dec-warmup-epochs needs a checkpoint with DEC modules",
                             "retrofit one with 'dec retrofit', or drop --dec-warmup-epochs")
        if cfg.canon_weight > 0 and not has_dec:
            raise UsageError("--canon-weight needs a checkpoint with DEC modules",
                             "retrofit one with 'dec retrofit', or drop --canon-weight")
        if cfg.freeze_backbone:
            for p in groups["backbone"]:
                p.requires_grad_(False)
            groups["backbone"] = []
        if not any(groups.values()):
            raise UsageError("nothing to train: the backbone is frozen and the model has no DEC modules",
                             "drop --freeze-backbone, or fine-tune a DEC checkpoint")
        self.model.to(self.device)
        self.groups = groups
        self.trainable = [p for g in groups.values() for p in g]
        return has_dec

    def _set_up_data(self) -> None:
        transform = eval_transform(self.model, self.inputs.img_size)
        self.train_set = ImageDataset(self.splits.train.samples, transform)
        self.val_set = ImageDataset(self.splits.val.samples, transform)
        self.train_sampler = dist_utils.train_sampler(self.train_set, seed=self.cfg.seed)
        # A last, smaller training batch is dropped (a batch of one breaks batch norm), unless that is all there is.
        self.train_loader = self._loader(self.train_set, self.train_sampler,
                                         drop_last=len(self.train_sampler) >= self.cfg.batch_size)
        self.val_loader = self._loader(self.val_set, dist_utils.eval_sampler(self.val_set))
        self.steps_per_epoch = len(self.train_loader)

    def _loader(self, dataset, sampler, drop_last: bool = False):
        return torch.utils.data.DataLoader(dataset, batch_size=self.cfg.batch_size, sampler=sampler,
                                           num_workers=self.cfg.workers, collate_fn=collate_skip,
                                           pin_memory=self.device.type == "cuda", drop_last=drop_last)

    def _set_up_forward(self) -> None:
        """DDP (under torchrun) for training, the bare model for validation; ``--compile`` compiles both."""
        model = self.model
        forward_module: nn.Module = model
        if self.dist.distributed:
            forward_module = DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda"
                                                     else None)
        self.train_forward = forward_module
        self.eval_forward = model
        if self.cfg.compile:
            self.train_forward = torch.compile(forward_module)
            self.eval_forward = torch.compile(model)

    def _make_val_warps(self) -> tuple[Tensor, Tensor]:
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
        if self.dist.is_main and self.on_event is not None:
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

    def _warp(self, n: int, gen: torch.Generator) -> Warp:
        cfg = self.cfg
        return random_warp(n, grid=cfg.grid, rows=cfg.rows, scale_range=cfg.scale_range,
                           generator=gen).to(self.device)

    def compute_loss(self, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """The training loss of one batch and its logits: cross-entropy plus the paired terms.

        ``--aug-prob`` replaces the batch by warped copies. ``--eq-weight`` adds the
        symmetric KL divergence between the predictions for x and for S(x; T),
        ``--consistency-weight`` the mean squared difference of their logits, and
        ``--canon-weight`` the canonicalization loss of the DEC modules
        (:mod:`dec_cli.canon.canonloss`), for one random warp T per image drawn only when
        any of them is on.
        """
        cfg = self.cfg
        # the random draws happen whatever the options, so streams stay aligned
        aug = torch.rand((), generator=gen).item() < cfg.aug_prob
        if aug:
            x = apply_warp(x, self._warp(x.shape[0], gen))
        paired = cfg.eq_weight > 0 or cfg.canon_weight > 0 or cfg.consistency_weight > 0
        with self._autocast(), dec_outputs(self.model) as warps:
            if paired:
                known = self._warp(x.shape[0], gen)
                logits, logits_w = self.train_forward(torch.cat([x, apply_warp(x, known)])).float().chunk(2)
            else:
                logits = self.train_forward(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        if cfg.eq_weight > 0:
            loss = loss + cfg.eq_weight * symmetric_kl(logits, logits_w).mean().float()
        if cfg.consistency_weight > 0:
            loss = loss + cfg.consistency_weight * F.mse_loss(logits, logits_w)
        if cfg.canon_weight > 0:
            loss = loss + cfg.canon_weight * canon_loss(warps, known)
        return loss, logits

    def _optimizer_step(self, loss: Tensor, weight: float, frozen: bool, epoch: int, index: int) -> None:
        """Backward, clip and step; a non-finite loss or gradient stops every rank before the weights change."""
        # Check before backward: a NaN forward can crash grid_sample's backward on CPU, and
        # every rank must agree to stop (the loss differs per rank; the check is all-reduced).
        if dist_utils.all_reduce_sum((~torch.isfinite(loss.detach())).float()).item() > 0:
            raise self._nan_error(epoch, index)
        (loss * weight).backward()
        if frozen:
            self.schedule.drop_backbone_grads()
        with_grad = [p for p in self.trainable if p.grad is not None]
        max_norm = self.cfg.clip_grad if self.cfg.clip_grad > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(with_grad, max_norm) if with_grad else torch.zeros(())
        if not torch.isfinite(grad_norm).item():  # gradients are already all-reduced: same on every rank
            raise self._nan_error(epoch, index)
        self.schedule.optimizer.step()
        self.schedule.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1

    def _batch(self, batch, shape: Optional[tuple]) -> tuple[Tensor, Tensor, float]:
        """A batch on the device with its weight; an all-unreadable batch is zeros of weight 0 (DDP stays in step)."""
        if batch.images is None:
            if shape is None:
                raise DecError("the first training batch has no readable images",
                               "check the files listed by 'dec evaluate --data DIR'")
            x = torch.zeros(shape, device=self.device)
            return x, torch.zeros(shape[0], dtype=torch.long, device=self.device), 0.0
        return batch.images.to(self.device, non_blocking=True), batch.labels.to(self.device, non_blocking=True), 1.0

    def _begin_epoch(self, epoch: int) -> tuple[torch.Generator, bool]:
        """Seed, shuffle and set train mode for ``epoch``; returns its warp generator and whether the backbone waits."""
        gen = self._seed_epoch(epoch)
        if hasattr(self.train_sampler, "set_epoch"):
            self.train_sampler.set_epoch(epoch)
        self.model.train()
        frozen = epoch < self.cfg.dec_warmup_epochs
        if frozen or self.cfg.freeze_backbone:
            hold_backbone_norm_statistics(self.model)
        self.emit("epoch_start", epoch=epoch + 1, epochs=self.cfg.epochs, steps=self.steps_per_epoch,
                  frozen_backbone=frozen)
        return gen, frozen

    def train_epoch(self, epoch: int) -> EpochStats:
        gen, frozen = self._begin_epoch(epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        seen = 0
        bad: list = []
        t0 = time.perf_counter()
        shape = None
        for i, batch in enumerate(self.train_loader):
            bad.extend(batch.errors)
            lrs = self.schedule.set_lrs(self.progress.step)
            x, y, weight = self._batch(batch, shape)
            shape = tuple(x.shape)
            loss, logits = self.compute_loss(x, y, gen)
            self._optimizer_step(loss, weight, frozen, epoch, i)
            n = int(y.shape[0]) if weight else 0
            seen += n
            if n:
                loss_sum += loss.detach().double() * n
                correct += (logits.detach().argmax(-1) == y).sum().double()
            if self.dist.is_main and self.on_event is not None:
                elapsed = time.perf_counter() - t0
                self.emit("step", epoch=epoch + 1, step=i + 1, steps=self.steps_per_epoch,
                          loss=float(loss_sum) / max(seen, 1), acc=float(correct) / max(seen, 1),
                          images_per_s=seen * self.dist.world / max(elapsed, 1e-9), lr=lrs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        sums = dist_utils.all_reduce_sums({"loss": float(loss_sum), "correct": float(correct), "n": float(seen)})
        n_all = max(sums["n"], 1.0)
        return EpochStats(sums["loss"] / n_all, sums["correct"] / n_all, int(sums["n"]), seconds, _gathered(bad))

    def _nan_error(self, epoch: int, index: int) -> DecError:
        return DecError(f"the loss became NaN or infinite at epoch {epoch + 1}, step {index + 1}; "
                        f"training stopped and {self.folder.kept(self.progress.epoch)}",
                        f"lower --lr ({self.cfg.lr:g}) / --dec-lr ({self.cfg.dec_lr:g}) or check the data, "
                        "then rerun with --resume")

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Validation loss, accuracy and consistency under each image's own warp, over all ranks."""
        self.model.eval()
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
                "bad": _gathered(bad)}

    # ------------------------------------------------------------------ the run

    def provenance(self, epoch: int, val_acc: float) -> dict[str, Any]:
        return {"command": self.command, "seed": self.cfg.seed, "data": str(Path(self.inputs.data).resolve()),
                "epochs": self.cfg.epochs, "epoch": epoch, "val_acc": val_acc, "base_checkpoint": self.inputs.ckpt,
                "finetune": self.cfg.to_dict()}

    def _end_epoch(self, epoch: int, stats: EpochStats, val: dict[str, Any]) -> None:
        """Record the epoch's row and write the run folder (rank 0); a failed write stops every rank."""
        lrs = self.schedule.current_lrs()
        row = {
            "epoch": epoch + 1, "train_loss": stats.loss, "train_acc": stats.acc, "val_loss": val["loss"],
            "val_acc": val["acc"], "val_consistency": val["consistency"],
            "lr_backbone": lrs.get("backbone", 0.0), "lr_dec": lrs.get("dec", 0.0),
            "images_per_s": stats.images / max(stats.seconds, 1e-9),
        }
        progress = self.progress
        improved = val["acc"] > progress.best_acc
        if improved:
            progress.best_acc, progress.best_epoch = val["acc"], epoch + 1
        self.rows.append(row)
        failure = None
        if self.dist.is_main:
            try:
                self.folder.write_epoch(
                    rows=self.rows, model=self.model, optimizer=self.schedule.optimizer,
                    progress=Progress(epoch + 1, progress.step, progress.best_acc, progress.best_epoch),
                    improved=improved, provenance=self.provenance(epoch + 1, row["val_acc"]), classes=self.classes)
            except DecError as exc:
                failure = (exc.message, exc.hint)
        failure = dist_utils.broadcast_object(failure)  # a failed save stops every rank, not just rank 0
        if failure is not None:
            raise DecError(*failure)
        progress.epoch = epoch + 1
        self.emit("epoch_end", row=row, best=improved, epochs=self.cfg.epochs)

    def run(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the JSON-ready summary."""
        cfg = self.cfg
        if self.start_epoch < cfg.epochs:
            self.emit("start", epochs=cfg.epochs, start_epoch=self.start_epoch + 1,
                      steps_per_epoch=self.steps_per_epoch,
                      train_images=len(self.train_set), val_images=len(self.val_set), classes=self.classes,
                      device=str(self.device), world_size=self.dist.world, dec=self.has_dec,
                      new_head=self.inputs.new_head, resumed=self.folder.state is not None,
                      weights_conversion=info_of(self.model).weights_conversion)
        bad_files: set = {(f"{split}/{b['path']}", b["reason"])
                          for split, data in (("train", self.splits.train), ("val", self.splits.val))
                          for b in data.unreadable}
        for epoch in range(self.start_epoch, cfg.epochs):
            stats = self.train_epoch(epoch)
            val = self.validate()
            bad_files.update(("train/" + self.splits.train.samples[i].rel, r) for i, r in stats.bad)
            bad_files.update(("val/" + self.splits.val.samples[i].rel, r) for i, r in val["bad"])
            self._end_epoch(epoch, stats, val)
        return self.summary(bad_files)

    def summary(self, bad_files: set) -> dict[str, Any]:
        """The JSON summary of the run (``dec finetune --json``)."""
        folder, resumed = self.folder, self.folder.state is not None
        return {
            "out_dir": str(folder.path),
            "epochs": self.cfg.epochs,
            "resumed_from_epoch": self.start_epoch if resumed else None,
            "epochs_run": max(self.cfg.epochs - self.start_epoch, 0),
            "best_epoch": self.progress.best_epoch,
            "best_val_acc": self.progress.best_acc,
            "final": self.rows[-1] if self.rows else None,
            "history": self.rows,
            "checkpoints": {"last": str(folder.last), "best": str(folder.best)},
            "metrics_csv": str(folder.metrics),
            "train_images": len(self.train_set),
            "val_images": len(self.val_set),
            "classes": self.classes,
            "dec": self.has_dec,
            "new_head": self.inputs.new_head,
            "world_size": self.dist.world,
            "device": str(self.device),
            "bad_files": [{"path": p, "reason": r} for p, r in sorted(bad_files)],
            "options": self.cfg.to_dict(),
        }


def _gathered(bad: list) -> list:
    """This rank's unreadable-file entries joined with every other rank's."""
    return [e for part in dist_utils.all_gather_objects(bad) for e in part]
