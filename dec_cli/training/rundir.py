"""The run folder of ``dec finetune``: metrics.csv, last/best checkpoints and the resume state.

One object owns the folder: it refuses to overwrite an earlier run (or to
resume none), reads the resume state, and after every epoch writes all four
files, each through a temporary name and a rename, so a failed write (a full
disk) leaves the previous epoch's files intact. ``state.pt`` holds tensors and
plain values only and is read with ``torch.load(weights_only=True)``.

``state.pt`` is the run's one commit point. It is written when the run starts
(its options, classes and checkpoint, at epoch 0) and then last after every
epoch, and it holds the metrics rows itself; so a process killed between any
two writes leaves a state that a ``--resume`` continues from, repeating at most
the epoch whose other files it had begun to write.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from dec_cli.backbones.checkpoint import save_model
from dec_cli.core.errors import DecError, UsageError, first_line
from dec_cli.core.files import atomic_path, remove_stale_temporaries

STATE_NAME = "state.pt"
LAST_NAME = "last.safetensors"
BEST_NAME = "best.safetensors"
METRICS_NAME = "metrics.csv"
OUTPUT_NAMES = frozenset({STATE_NAME, LAST_NAME, BEST_NAME, METRICS_NAME})
STATE_FORMAT = 1
METRICS_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_consistency",
                   "lr_backbone", "lr_dec", "images_per_s")


@dataclass
class Progress:
    """Where a run stands: completed epochs, optimizer steps, and the best validation accuracy so far."""

    epoch: int = 0
    step: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0


class RunFolder:
    """One fine-tuning run's folder; ``state`` is the resume state (None for a new run)."""

    def __init__(self, path: str | Path, resume: bool):
        self.path = Path(path)
        self.state = self._check(resume)
        self.last = self.path / LAST_NAME
        self.best = self.path / BEST_NAME
        self.metrics = self.path / METRICS_NAME

    def _check(self, resume: bool) -> Optional[dict]:
        """Refuse to overwrite an earlier run, or to resume none; return its state when resuming."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise UsageError(f"output {out} exists and is not a directory", "pass -o DIR")
        blocker = next((p for p in out.absolute().parents if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise UsageError(f"output {out} cannot be made: {blocker} is a file, not a folder", "pass -o DIR")
        state = read_state(out) if out.is_dir() else None
        known = [n for n in (STATE_NAME, LAST_NAME, BEST_NAME, METRICS_NAME) if (out / n).exists()]
        if resume and state is None and not known and _start_was_cut(out):
            return None  # killed while recording the start: nothing was trained, so this is that run's start
        if resume and state is None:  # starting afresh would silently drop the run's options
            raise UsageError(f"--resume: {out} holds no run to continue (no {STATE_NAME})",
                             f"the run stopped before its first epoch was saved: delete {out} and start it again "
                             "without --resume" if known else "drop --resume to start a new run, with all its options")
        if not resume and known:
            raise UsageError(f"{out} already holds a fine-tuning run ({', '.join(known)})",
                             "add --resume to continue it, or choose another -o folder")
        return state

    # ------------------------------------------------------------------ reading the resume state

    def saved_options(self) -> dict[str, Any]:
        """The options the resumed run was started with ({} for a new run)."""
        return json.loads(self.state["options"]) if self.state is not None else {}

    def check_classes(self, classes: list[str]) -> None:
        """A resumed run must see the classes it was started with."""
        if self.state is not None and json.loads(self.state["class_names"]) != classes:
            raise UsageError(f"the data's classes differ from those of the run in {self.path}",
                             "resume with the same DATA, or start a new run in another -o folder")

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, ckpt: str) -> Progress:
        """Load the saved weights and optimizer moments; returns where the run stood (a new run: the start)."""
        state = self.state
        if state is None or "model" not in state:  # a new run, or one stopped before its first epoch ended
            return Progress()
        try:
            model.load_state_dict(state["model"])
        except RuntimeError:
            raise UsageError(f"the run in {self.path} was made from another model than {ckpt}",
                             f"resume with its original CKPT ({state.get('ckpt')})") from None
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise UsageError(f"the optimizer state in {self.path} does not fit these options ({exc})",
                             "resume with the run's original --freeze-backbone and model") from None
        return Progress(int(state["epoch"]), int(state["step"]), float(state["best_acc"]), int(state["best_epoch"]))

    def rows_until(self, epoch: int) -> list[dict]:
        """The metrics rows of epochs 1..``epoch``: the state's own (a metrics.csv row written after it is dropped)."""
        if self.state is not None and "rows" in self.state:
            return [r for r in json.loads(self.state["rows"]) if int(r["epoch"]) <= epoch]
        return [r for r in read_metrics(self.metrics) if int(r["epoch"]) <= epoch]  # a state from an older dec

    # ------------------------------------------------------------------ writing

    def prepare(self, *, options: dict[str, Any], classes: list[str], ckpt: str) -> None:
        """Create the folder, sweep the temporary files a killed writer left, and record a new run's start.

        Rank 0, before training. The start record is a state at epoch 0 without
        weights: a run killed in its first epoch resumes from it with its options.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        if self.state is None:
            start = _state_record(Progress(), [], options, classes, ckpt)
            _guarded_write(self.path / STATE_NAME, lambda p: torch.save(start, p))

    def kept(self, epochs_done: int) -> str:
        """What a failed run leaves, for its error line."""
        if self.last.exists() and epochs_done:
            return f"the last good checkpoint {self.last} (epoch {epochs_done}) is kept"
        return "no epoch had completed, so nothing was saved"

    def write_epoch(self, *, rows: list[dict], model: nn.Module, optimizer: torch.optim.Optimizer,
                    progress: Progress, improved: bool, provenance: dict[str, Any], classes: list[str]) -> None:
        """Write metrics, last/best checkpoints and the resume state (rank 0; each atomic).

        ``provenance`` goes into the checkpoints; its ``finetune`` options and ``base_checkpoint`` into the state.
        """
        _guarded_write(self.metrics, lambda p: p.write_text(metrics_text(rows), encoding="utf-8"))
        _guarded_write(self.last, lambda p: save_model(model, p, **provenance))
        if improved:
            _guarded_write(self.best, lambda p: shutil.copyfile(self.last, p))
        state = _state_record(progress, rows, provenance["finetune"], classes, provenance["base_checkpoint"])
        state["model"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        state["optimizer"] = _to_cpu(optimizer.state_dict())
        _guarded_write(self.path / STATE_NAME, lambda p: torch.save(state, p))  # last: the epoch's commit


def _state_record(progress: Progress, rows: list[dict], options: dict[str, Any], classes: list[str],
                  ckpt: str) -> dict[str, Any]:
    """The plain-value part of ``state.pt`` (the start record is only this)."""
    return {
        "format": STATE_FORMAT,
        "epoch": progress.epoch,
        "step": progress.step,
        "best_acc": progress.best_acc,
        "best_epoch": progress.best_epoch,
        "rows": json.dumps(rows),
        "options": json.dumps(options),
        "class_names": json.dumps(classes),
        "ckpt": ckpt,
    }


def _start_was_cut(out: Path) -> bool:
    """Whether ``out`` holds only the temporary file of a start record that a kill cut short."""
    return out.is_dir() and any(p.name.startswith(f".{STATE_NAME}.") for p in out.glob(".*.part*"))


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


def metrics_text(rows: list[dict]) -> str:
    """metrics.csv for ``rows``: the epoch as an integer, every other column to 6 significant digits."""
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
