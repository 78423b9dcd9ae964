"""`bench/warp_folder.py` runs end to end on a tiny tree and reports every figure the README quotes.

Only that it runs and what it reports are checked here: speed is measured by
running the bench, never by a timed test.
"""

import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


def test_warp_folder_bench_reports_its_figures(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "bench" / "warp_folder.py"), "--photos", str(ROOT / "examples" / "photos"),
           "--files", "3", "--repeats", "2", "--json", str(out), "--zoom-sizes", "64", "--zoom-files", "2",
           "--workers", "1,2", "--scaling-files", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["files"] == 3
    assert results["kernel"]["grid_sample_us"] > 0 and results["kernel"]["ratio"] > 0
    assert results["kernel"]["rounds"] == 3 * 2 * len(results["files_per_s"])  # spread between the loops
    assert {"pillow", "dec_warp"} <= set(results["files_per_s"])
    for name in results["files_per_s"]:
        cost = results["output_encode"][name]
        assert cost["png_files"] == 3 and cost["encode_ms"] > 0 and cost["kB"] > 0
    assert 0 < results["dec_vs_pillow"] and 0 < results["dec_vs_pillow_median_round"]
    assert "dec warp / pillow" in proc.stdout and "re-encoding" in proc.stdout
    row = results["zoom_sweep"]["64"]
    assert row["zoom_vs_random"] > 0 and row["zoom_object_vs_random"] > 0
    assert set(row["ms_per_output"]) == {"random", "zoom", "zoom_object"}
    assert set(results["workers"]["speedup"]) == {"1", "2"} and results["workers"]["speedup"]["1"] == 1
    assert "zoom sweep" in proc.stdout and "--workers on 4 photos" in proc.stdout


def test_digits_table_runs_on_a_tiny_wide_benchmark(tmp_path):
    """`bench/digits_table.py` on a tiny tree (1 epoch, 1 seed): the --json list and its dec evaluate reports."""
    out, dest = tmp_path / "table", tmp_path / "runs.json"
    cmd = [sys.executable, str(ROOT / "bench" / "digits_table.py"), "--out", str(out), "--protocol", "wide",
           "--source", str(ROOT / "dec_cli" / "data" / "mnist-8k.npz"), "--methods", "dec,tta", "--seeds", "0",
           "--epochs", "1", "--n-train", "40", "--n-val", "20", "--n-test", "6", "--threads", "1",
           "--json", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(dest.read_text())
    assert [(r["method"], r["seed"]) for r in runs] == [("dec", 0), ("tta", 0)]
    for r in runs:
        assert set(r) == {"method", "seed", "test", "zoom"}
        assert r["test"]["schema_version"] == 1 and r["test"]["data"]["images"] == 6
        assert r["zoom"]["data"]["zooms"] == [0.4, 0.6, 0.8, 1.0, 1.25, 1.6, 2.0]  # the wide protocol's sweep
    dec, tta = runs
    assert [m["name"] for m in dec["test"]["models"]] == ["best"]
    assert dec["test"]["models"][0]["metrics"]["canon_error"] is not None
    assert [m["path"] for m in dec["test"]["models"][0]["dec_modules"]] == ["layer2"]
    assert [m["name"] for m in tta["zoom"]["models"]] == ["best", "best+tta"]  # the warp-aug model, searched
    assert tta["zoom"]["settings"]["tta_scales"] == [0.5, 0.63, 0.8, 1.0, 1.25, 1.6, 2.0]
    config = json.loads((out / "digits-wide" / "digits.json").read_text())["config"]
    assert config["train_scale_range"] == [0.8, 1.25] and config["scale_range"] == [0.4, 2.0]
    table = (out / "wide-table.md").read_text()
    assert "| DEC + canonicalization loss + invariance loss (+ warp augmentation) | 0 |" in table and "| test-time scale search" in table
    # A second run reuses the finished runs and reports.
    best = out / "wide-warp-aug-s0" / "best.safetensors"
    stamp = best.stat().st_mtime_ns
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert best.stat().st_mtime_ns == stamp and json.loads(dest.read_text()) == runs
    # --select evaluates the same models on the validation split only (no test or zoom report).
    chosen = subprocess.run([*cmd, "--select"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert chosen.returncode == 0, chosen.stderr
    val_runs = json.loads(dest.read_text())
    assert [(r["method"], set(r)) for r in val_runs] == [("dec", {"method", "seed", "val"}),
                                                           ("tta", {"method", "seed", "val"})]
    assert val_runs[0]["val"]["data"]["images"] == 20 and val_runs[0]["val"]["settings"]["scale_range"] == [0.5, 2.0]
    assert "canon. error" in (out / "wide-select.md").read_text() and best.stat().st_mtime_ns == stamp


def test_digits_table_rejects_unknown_methods(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "digits_table.py"), "--out", str(tmp_path),
                           "--methods", "plain,aug"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "unknown method(s) aug" in proc.stderr


def test_digits_table_paper_protocol_and_paper_recipe(tmp_path):
    """`--protocol paper` builds `dec digits --protocol paper`; `dec-paper` retrofits the warp-aug model."""
    out, dest = tmp_path / "table", tmp_path / "runs.json"
    cmd = [sys.executable, str(ROOT / "bench" / "digits_table.py"), "--out", str(out), "--protocol", "paper",
           "--methods", "plain,dec-paper", "--seeds", "0", "--epochs", "1", "--classes", "4", "--n-train", "8",
           "--n-val", "4", "--n-test", "4", "--threads", "1", "--json", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "digits-paper" / "digits.json").read_text())["config"]
    assert (config["protocol"], config["digits"], config["classes"], config["scale_range"]) == ("paper", 3, 4, [0.4, 2.0])
    runs = json.loads(dest.read_text())
    assert [r["method"] for r in runs] == ["plain", "dec-paper"]
    assert runs[1]["zoom"]["data"]["zooms"] == [0.4, 0.6, 0.8, 1.0, 1.25, 1.6, 2.0]
    log = (out / "paper-dec-paper-s0.log").read_text()
    assert f"--weights {out / 'paper-warp-aug-s0' / 'best.safetensors'}" in log  # from the warp-aug model
    import torch

    options = json.loads(torch.load(out / "paper-dec-paper-s0" / "state.pt", weights_only=True)["options"])
    assert {k: options[k] for k in ("lr", "dec_lr", "dec_warmup_epochs", "consistency_weight", "aug_prob")} == \
        {"lr": 1e-7, "dec_lr": 1e-2, "dec_warmup_epochs": 1, "consistency_weight": 0.01, "aug_prob": 0.5}
    assert "| DEC, paper recipe (from warp augmentation) | 0 |" in (out / "paper-table.md").read_text()


def test_digits_table_image_dec_methods_reach_dec_retrofit():
    """`dec-image*` pass the table's retrofit-option check, and `dec-image-input` warps the backbone's input."""
    sys.path.insert(0, str(ROOT / "bench"))
    from digits_methods import BACKBONES, METHODS, check_retrofit_options

    check_retrofit_options(["dec-image", "dec-image-input", "dec-image-paper"])  # exits if an option is missing
    options = BACKBONES["test_resnet"].retrofit_options(METHODS["dec-image-input"].retrofit)
    assert options[options.index("--dec-input") + 1] == "image" and options[options.index("--at") + 1] == "conv1"
