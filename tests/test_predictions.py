"""`dec evaluate --predictions FILE.csv`: top-5 names and probabilities per image and view."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from dec_cli.evaluation.predictions import COLUMNS

DATA = Path(__file__).parent / "data" / "photos"
CKPT = Path(__file__).resolve().parents[1] / "dec_cli" / "data" / "digits-baseline.safetensors"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def test_imagenet_names_and_one_row_per_image_and_warp(run_dec, tmp_path):
    from timm.data import ImageNetInfo

    out = tmp_path / "pred.csv"
    result = run_dec("evaluate", "test_resnet", "--random-init", "--data", DATA / "animals", "--img-size", "32",
                     "--warps", "2", "--predictions", out, "--quiet")
    assert result.code == 0, result.err
    rows = _rows(out)
    assert [(r["image"], r["warp"]) for r in rows] == [(img, w) for img in ("chelsea.png", "horse.png")
                                                      for w in ("", "0", "1")]
    imagenet = {ImageNetInfo().index_to_description(i) for i in range(1000)}
    for r in rows:
        probs = [float(r[f"p{i}"]) for i in range(1, 6)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(r[f"class{i}"] in imagenet for i in range(1, 6))
        assert (r["warp_strength"] == "") == (r["warp"] == "")


def test_checkpoint_class_names_and_zoom_views(run_dec, tmp_path):
    zoomed = tmp_path / "zoomed"
    assert run_dec("warp", DATA / "animals", zoomed, "--zoom", "0.8,1", "-q").code == 0
    out = tmp_path / "pred.csv"
    result = run_dec("evaluate", CKPT, "--data", zoomed, "--predictions", out, "--quiet")
    assert result.code == 0, result.err
    names = json.loads(run_dec("info", CKPT, "--json", "-").out)["class_names"]
    rows = _rows(out)
    assert sorted((r["source"], r["zoom"]) for r in rows) == [(s, z) for s in ("chelsea.png", "horse.png")
                                                              for z in ("0.8", "1")]
    assert all(r["class1"] in names and r["warp"] == "" for r in rows)


def test_a_predictions_file_not_named_csv_is_a_usage_error(run_dec, tmp_path):
    result = run_dec("evaluate", CKPT, "--data", DATA, "--predictions", tmp_path / "p.txt")
    assert result.code == 2 and ".csv" in result.err
    assert not (tmp_path / "p.txt").exists()
