"""Report columns: `--name` (repeatable), and default names that stay distinct (parent folder on collision)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dec_cli.core.errors import UsageError
from dec_cli.evaluation.modelnames import default_names, report_names

CKPT = Path(__file__).resolve().parents[1] / "dec_cli" / "data" / "digits-baseline.safetensors"


def test_colliding_stems_take_their_parent_folder(tmp_path):
    a, b = tmp_path / "runA" / "best.safetensors", tmp_path / "runB" / "best.safetensors"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(b"x")
    assert default_names([str(a), str(b), "resnet18"]) == ["runA/best", "runB/best", "resnet18"]
    assert default_names(["resnet18", "resnet18"]) == ["resnet18#1", "resnet18#2"]


def test_given_names_come_first_and_must_be_distinct():
    assert report_names(["a", "b"], ["base"]) == ["base", "b"]
    with pytest.raises(UsageError, match="used twice"):
        report_names(["a", "b"], ["b"])
    with pytest.raises(UsageError, match="--name"):
        report_names(["a"], ["x", "y"])


def test_name_option_sets_the_report_columns(run_dec, tmp_path):
    data = Path(__file__).parent / "data" / "photos"
    copy = tmp_path / "other" / CKPT.name
    copy.parent.mkdir()
    shutil.copy(CKPT, copy)
    result = run_dec("evaluate", CKPT, copy, "--name", "baseline", "--data", data, "--no-labels", "--warps", "1",
                     "--limit", "2", "--quiet", "--json", "-")
    assert result.code == 0, result.err
    assert [m["name"] for m in json.loads(result.out)["models"]] == ["baseline", "other/digits-baseline"]
    bad = run_dec("evaluate", CKPT, "--name", "a", "--name", "b", "--data", data)
    assert bad.code == 2 and "--name" in bad.err
