"""`dec finetune`'s options are declared once (`FinetuneConfig`); its schedule; the CLI starts without torch."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import sys

import pytest
import typer

from dec_cli.cli import app
from dec_cli.core.errors import UsageError
from dec_cli.training.finetune_options import FinetuneConfig, command_line_options, command_text
from dec_cli.training.optimizer import lr_factor


def _finetune_command():
    return typer.main.get_command(app).commands["finetune"]


def test_every_config_field_is_a_command_line_option_with_its_default():
    params = {p.name: p for p in _finetune_command().params}
    for f in dataclasses.fields(FinetuneConfig):
        assert f.name in params, f.name
        shown = ",".join(f"{v:g}" for v in f.default) if isinstance(f.default, tuple) else f.default
        assert params[f.name].default == shown, f.name
    own = {"ckpt", "data", "out_dir", "resume", "config", "json_dest", "quiet"}
    assert set(params) == own | set(FinetuneConfig.option_names())


def test_recorded_command_parses_back_to_the_same_options(tmp_path):
    """The provenance command, typed again, chooses exactly the options of the run (bools both ways)."""
    typed = {"epochs": 3, "lr": 0.0005, "freeze_backbone": True, "amp": False, "scale_range": "0.8,1.25",
             "val": "my val", "num_classes": 4}
    text = command_text("ckpt.safetensors", "data", "runs/x", typed, config=None, resume=True)
    words = shlex.split(text)
    assert words[:6] == ["dec", "finetune", "ckpt.safetensors", "data", "-o", "runs/x"] and words[-1] == "--resume"
    ctx = _finetune_command().make_context("finetune", words[2:])
    again = {k: ctx.params[k] for k in FinetuneConfig.option_names()
             if ctx.get_parameter_source(k).name == "COMMANDLINE"}
    assert FinetuneConfig.from_options(again) == FinetuneConfig.from_options(typed)
    assert set(again) == set(typed)


def test_config_file_sits_under_the_command_line(tmp_path):
    cfg = tmp_path / "ft.yaml"
    cfg.write_text("epochs: 5\nbatch-size: 8\nfreeze_backbone: yes\n")
    chosen = command_line_options({"epochs": 2}, str(cfg))
    assert chosen == {"epochs": 2, "batch_size": 8, "freeze_backbone": True}
    c = FinetuneConfig.from_options(chosen)
    assert (c.epochs, c.batch_size, c.freeze_backbone, c.lr) == (2, 8, True, FinetuneConfig.lr)
    with pytest.raises(UsageError, match="--batch-size: invalid value 'many'"):
        FinetuneConfig.from_options({"batch_size": "many"})


def test_lr_factor_waits_warms_up_then_decays_to_zero():
    total, warm, start = 40, 4, 8
    f = [lr_factor(s, total, warm, start) for s in range(total)]
    assert f[:start] == [0.0] * start
    assert f[start:start + warm] == [(i + 1) / (warm + 1) for i in range(warm)]
    assert f[start + warm] == 1.0
    decay = f[start + warm:]
    assert all(a >= b for a, b in zip(decay, decay[1:])) and decay[-1] < 0.01
    assert lr_factor(0, 8, warmup=100) == 1 / 3  # warmup capped at a quarter of the run


def test_the_command_line_starts_without_torch():
    """`dec --help` and `dec --version` stay fast: building the commands imports no torch, timm or numpy."""
    code = "import sys, dec_cli.cli; print(sorted(m for m in ('torch', 'timm', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
