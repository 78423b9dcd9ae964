"""The options of ``dec finetune``, declared once: name, type, default and help of each.

`FinetuneConfig` is the single source: ``cli.py`` builds the command's Typer
options from its fields, ``--config FILE.yaml`` may set any of them, and a run
saves them for ``--resume``. Precedence, strongest first: options typed on the
command line, the config file, a resumed run's saved options, the defaults.
This module stays free of torch (the CLI reads it at start-up); ``--scale-range``
is checked as it is parsed (:class:`~dec_cli.warps.scalerange.ScaleRange`), the other
values by :func:`dec_cli.jobs.finetune.check_options`.
"""

from __future__ import annotations

import dataclasses
import shlex
import typing
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, NamedTuple, Optional

from dec_cli.core.config import read_config
from dec_cli.core.errors import UsageError
from dec_cli.warps.scalerange import DEFAULT_SCALE_RANGE, ScaleRange, ScaleRangeError


def _option(default: Any, help: str, *, flag: Optional[str] = None, metavar: Optional[str] = None) -> Any:
    """A field with its command-line help; ``flag`` overrides the option's spelling (``--x/--no-x``)."""
    return field(default=default, metadata={"help": help, "flag": flag, "metavar": metavar})


@dataclass
class FinetuneConfig:
    """Every option of ``dec finetune`` that shapes the run (what ``--config`` may set)."""

    epochs: int = _option(10, "Epochs in the whole run.")
    batch_size: int = _option(32, "Images per step and process.")
    lr: float = _option(1e-4, "Peak learning rate of the backbone (and of a new head).")
    dec_lr: float = _option(1e-3, "Peak learning rate of the DEC modules.")
    weight_decay: float = _option(0.05, "AdamW weight decay (not on biases and norms).")
    warmup_epochs: float = _option(1.0, "Linear warmup before the cosine decay (at most a quarter of the run).")
    dec_warmup_epochs: int = _option(0, "Train the DEC alone for this many epochs first, backbone frozen.")
    freeze_backbone: bool = _option(False, "Train only the DEC (and a new head).",
                                    flag="--freeze-backbone/--no-freeze-backbone")
    eq_weight: float = _option(0.0, "Weight of the invariance loss: symmetric KL divergence between the "
                                    "predictions for x and for S x, S a random warp.")
    consistency_weight: float = _option(0.0, "Weight of the logits consistency loss: mean squared difference "
                                             "between the logits of x and of S x (the paper uses 0.01).")
    canon_weight: float = _option(0.0, "Weight of the DEC canonicalization loss: Phi(S x) should be S o Phi(x) "
                                       "(DEC checkpoints).")
    aug_prob: float = _option(0.0, "Probability that a training batch is replaced by warped copies.")
    scale_range: ScaleRange = _option(DEFAULT_SCALE_RANGE, "Local scale factors of the random warps.",
                                      metavar="LO,HI")
    grid: int = _option(8, "Warp intervals per axis.")
    rows: int = _option(1, "Warp control rows (1 = separable).")
    label_smoothing: float = _option(0.0, "Label smoothing of the cross-entropy.")
    clip_grad: float = _option(1.0, "Clip the gradient norm to this (0 = off).")
    amp: bool = _option(False, "bf16 autocast (meant for GPUs).", flag="--amp/--no-amp")
    compile: bool = _option(False, "torch.compile the model.", flag="--compile/--no-compile")
    workers: int = _option(0, "Data-loading worker processes.")
    seed: int = _option(0, "Seed of data order, warps and a new head.")
    device: str = _option("auto", "auto, cpu, cuda, cuda:1 ...")
    img_size: Optional[int] = _option(None, "Input size (default: the model's).")
    num_classes: Optional[int] = _option(None, "Train a new head with this many classes.")
    val: Optional[str] = _option(None, "Validation tree (default DATA/val).", metavar="DIR")
    weights: Optional[str] = _option(None, "Local weights for a timm model name.", metavar="FILE")
    pretrained: bool = _option(False, "timm hub weights for a timm model name.", flag="--pretrained")
    random_init: bool = _option(False, "Random weights for a timm model name (training from scratch).",
                                flag="--random-init")

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "FinetuneConfig":
        """Build from a dict of (possibly YAML-typed) values, coercing each; a bad one is a usage error."""
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in options and options[f.name] is not None:
                kwargs[f.name] = _coerce(f.name, f.default, options[f.name])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["scale_range"] = list(self.scale_range)
        return data


def flag_of(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def _coerce(name: str, default: Any, value: Any) -> Any:
    """Turn a command-line or YAML value into the option's type; a bad one is a usage error."""
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
        raise UsageError(f"{flag_of(name)}: {exc}") from None
    except (TypeError, ValueError):
        raise UsageError(f"{flag_of(name)}: invalid value {value!r}", "see 'dec finetune --help'") from None


# --------------------------------------------------------------------------- the command line


class CliOption(NamedTuple):
    """One `FinetuneConfig` field as the command line spells it (read by ``cli.py`` to build Typer options)."""

    name: str
    type: Any  # what the command line parses: int, float, bool, str, Optional[...]
    default: Any  # as the command line shows and parses it
    flag: str
    help: str
    metavar: Optional[str]


def cli_options() -> Iterator[CliOption]:
    """The fields of `FinetuneConfig` as command-line options, in declaration order."""
    hints = typing.get_type_hints(FinetuneConfig)
    for f in dataclasses.fields(FinetuneConfig):
        kind, default = hints[f.name], f.default
        if isinstance(default, tuple):  # a range is typed as LO,HI
            kind, default = str, ",".join(f"{v:g}" for v in default)
        yield CliOption(f.name, kind, default, f.metadata["flag"] or flag_of(f.name), f.metadata["help"],
                        f.metadata["metavar"])


def command_line_options(typed: Mapping[str, Any], config: Optional[str]) -> dict[str, Any]:
    """The explicitly chosen options: ``--config FILE.yaml`` under those typed on the command line."""
    from_file = read_config(config, FinetuneConfig.option_names()) if config else {}
    return {**from_file, **typed}


def command_text(ckpt: str, data: str, out_dir: str, typed: Mapping[str, Any], *, config: Optional[str],
                 resume: bool) -> str:
    """The command as typed (the run's provenance), options in `FinetuneConfig` order, shell-quoted."""
    words = ["dec", "finetune", ckpt, data, "-o", out_dir]
    for key in FinetuneConfig.option_names():
        if key not in typed:
            continue
        value = typed[key]
        if isinstance(value, bool):
            words.append(flag_of(key) if value else "--no-" + key.replace("_", "-"))
        else:
            words += [flag_of(key), str(value)]
    words += (["--config", config] if config else []) + (["--resume"] if resume else [])
    return " ".join(shlex.quote(str(w)) for w in words)
