"""``dec retrofit`` as a job: options checked, the backbone built, DEC inserted, the checkpoint saved;
and ``dec models``, the catalogue of recipes it can use.

The checkpoint records how it was made (command, seed, weights source, the
retrofit options given); the returned summaries are the commands' JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from dec_cli.canon.autorecipe import AUTO
from dec_cli.canon.imagedec import INPUTS
from dec_cli.canon.catalogue import recipe_catalogue  # noqa: F401  (dec models, torch-free; kept importable here)
from dec_cli.backbones.backbone import create_backbone
from dec_cli.backbones.checkpoint import save_model
from dec_cli.core.errors import UsageError
from dec_cli.core.modelinfo import info_of
from dec_cli.evaluation.reportpath import check_report_path
from dec_cli.backbones.weightsource import weights_source
from dec_cli.canon.retrofit import (backbone_parameters, builtin_recipes, count_parameters, dec_parameters, insertion_table,
                              retrofit)

MODES = ("canonicalize", "equivariant")


@dataclass
class RetrofitJob:
    """What ``dec retrofit`` was asked for; the weights: ``weights``, ``pretrained`` or ``random_init`` (one)."""

    model: str
    output: str
    weights: Optional[str] = None
    pretrained: bool = False
    random_init: bool = False
    num_classes: Optional[int] = None
    img_size: Optional[int] = None
    recipe: Optional[str] = None
    at: Optional[str] = None
    mode: Optional[str] = None
    grid: Optional[int] = None
    rows: Optional[int] = None
    iters: Optional[int] = None
    solver: Optional[str] = None
    hidden: Optional[int] = None
    channels: Optional[int] = None
    dec_input: Optional[str] = None
    seed: int = 0
    force: bool = False

    def check(self, report: Optional[str]) -> None:
        """Usage errors before any work: the output's name, an existing output, ``report``'s path, the options."""
        if not self.output.lower().endswith(".safetensors"):
            raise UsageError(f"output {self.output} must end in .safetensors", "name it like OUT.safetensors")
        if Path(self.output).exists() and not self.force:
            raise UsageError(f"{self.output} exists", "pass --force to overwrite it, or choose another -o")
        check_report_path(report, "--json", files=[("OUT", self.output), ("--weights", self.weights),
                                                   ("--recipe", self.recipe)])
        if self.mode is not None and self.mode not in MODES:
            raise UsageError(f"--mode must be canonicalize or equivariant, not {self.mode!r}")
        if self.dec_input is not None and self.dec_input not in INPUTS:
            raise UsageError(f"--dec-input must be {' or '.join(INPUTS)}, not {self.dec_input!r}")
        self.weights_source()

    def weights_source(self) -> str:
        """``pretrained``, ``random-init`` or the ``--weights`` FILE; none or two is a usage error."""
        return weights_source(self.model, is_checkpoint=False, weights=self.weights, pretrained=self.pretrained,
                              random_init=self.random_init)

    def options(self) -> dict[str, Any]:
        """The retrofit options given (the checkpoint's provenance)."""
        given = {"recipe": self.recipe, "at": self.at, "mode": self.mode, "grid": self.grid, "rows": self.rows,
                 "iters": self.iters, "solver": self.solver, "hidden": self.hidden, "channels": self.channels,
                 "dec_input": self.dec_input,
                 "img_size": self.img_size, "num_classes": self.num_classes}
        return {k: v for k, v in given.items() if v is not None}


def run_retrofit(job: RetrofitJob, command: str,
                 on_weights: Optional[Callable[[Optional[dict]], None]] = None) -> tuple[dict[str, Any], str]:
    """Build, retrofit and save; returns the JSON summary and the recipe's description.

    ``on_weights`` hears how ``--weights`` were converted (None: they were not) as soon as the backbone is built.
    """
    torch.manual_seed(job.seed)
    net = create_backbone(job.model, weights=job.weights, pretrained=job.pretrained,
                          num_classes=job.num_classes, img_size=job.img_size)
    if on_weights is not None:
        on_weights(info_of(net).weights_conversion)
    retrofit(net, recipe=job.recipe, at=job.at, mode=job.mode, grid=job.grid, rows=job.rows, iters=job.iters,
             img_size=job.img_size, solver=job.solver, hidden=job.hidden, channels=job.channels,
             dec_input=job.dec_input)
    save_model(net, job.output, command=command, seed=job.seed,
               weights=job.weights_source(),
               options=job.options())
    info = net.dec_info
    rec = info["recipe"]
    n_bb, n_dec = count_parameters(backbone_parameters(net)), count_parameters(dec_parameters(net))
    summary = {"model": job.model, "output": job.output, "weights_source": job.weights_source(), "recipe": rec["name"], "mode": rec["mode"],
               "dec_input": rec.get("input", "features"),
               "num_classes": info["num_classes"], "dec_settings": rec["dec"], "points": rec["points"],
               "layers": insertion_table(net),
               "parameters": {"backbone": n_bb, "dec": n_dec, "dec_fraction": n_dec / max(n_bb, 1)}}
    return summary, rec.get("description", "")


