"""One weights rule for timm names in evaluate, finetune and retrofit: ask for weights, or stop (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PHOTOS = Path(__file__).parent / "data" / "photos"


def _one_line(result, *needles: str) -> None:
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("command", [
    ("evaluate", "test_resnet", "--data", PHOTOS),
    ("finetune", "test_resnet", PHOTOS, "-o", "RUN"),
    ("retrofit", "test_resnet", "-o", "OUT.safetensors"),
])
def test_a_timm_name_without_weights_stops_naming_the_three_choices(run_dec, tmp_path, command):
    args = [tmp_path / "run" if a == "RUN" else tmp_path / a if a == "OUT.safetensors" else a for a in command]
    _one_line(run_dec(*args), "needs weights", "--pretrained", "--weights FILE", "--random-init")
    assert not (tmp_path / "run").exists() and not (tmp_path / "OUT.safetensors").exists()


def test_two_sources_exclude_each_other(run_dec, tmp_path):
    _one_line(run_dec("evaluate", "test_resnet", "--pretrained", "--random-init", "--data", PHOTOS),
              "--pretrained and --random-init exclude each other")
    _one_line(run_dec("retrofit", "test_resnet", "--pretrained", "--random-init", "-o", tmp_path / "x.safetensors"),
              "exclude each other")


def test_a_checkpoint_takes_no_source_of_weights(run_dec):
    ckpt = Path(__file__).resolve().parents[1] / "dec_cli" / "data" / "digits-dec.safetensors"
    _one_line(run_dec("evaluate", ckpt, "--random-init", "--data", PHOTOS), "not to checkpoints")


def test_random_init_is_recorded_in_the_report(run_dec, tmp_path):
    result = run_dec("evaluate", "test_resnet", "--random-init", "--data", PHOTOS, "--no-labels", "--img-size", "32",
                     "--warps", "1", "--limit", "2", "--quiet", "--json", "-")
    assert result.code == 0, result.err
    assert json.loads(result.out)["models"][0]["weights_source"] == "random-init"


def test_retrofit_records_the_source_in_checkpoint_and_summary(run_dec, tmp_path):
    out = tmp_path / "r.safetensors"
    result = run_dec("retrofit", "test_resnet", "--random-init", "-o", out, "--quiet", "--json", "-")
    assert result.code == 0, result.err
    assert json.loads(result.out)["weights_source"] == "random-init"
    info = json.loads(run_dec("info", out, "--json", "-").out)
    assert info["provenance"]["weights"] == "random-init"
