"""`dec evaluate` under torchrun (gloo, two CPU processes) gives the single-process report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from dec_cli.backbones.checkpoint import load_model
from dec_cli.core.distributed import ShardSampler, shard_indices

from helpers import assert_metric_close  # noqa: E402  (tests/ is on sys.path under pytest)
from test_evaluate import make_zoom_tree  # noqa: E402


def _single_and_torchrun(run_dec, args: list, tmp_path) -> tuple[dict, dict]:
    """The JSON reports of ``args`` run in this process and under torchrun with two gloo ranks."""
    single = run_dec(*args, "--json", tmp_path / "single.json")
    assert single.code == 0, single.err
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "dec_cli", *args, "--json", str(tmp_path / "ddp.json")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (json.loads((tmp_path / "single.json").read_text()),
            json.loads((tmp_path / "ddp.json").read_text()))


def test_shards_cover_every_index_once():
    shards = [shard_indices(11, r, 3) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))
    assert len(ShardSampler(11, 2, 3)) == 3


def test_torchrun_two_processes_match_single_process(tmp_path, run_dec):
    torch.manual_seed(0)
    model = load_model("test_resnet", num_classes=2)
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    data = make_zoom_tree(tmp_path / "zoom")  # sources of a zoom group land on different ranks
    (data / "square" / "broken.png").write_bytes(b"junk")
    classes = tmp_path / "classes.txt"
    classes.write_text("circle\nsquare\n")
    # test_vit's 1000 random outputs change their top-1 along the sweep, so the flip rate is not 0.
    args = ["evaluate", "test_resnet", "test_vit", "--weights", str(weights), "--random-init",
            "--class-map", str(classes),
            "--data", str(data), "--img-size", "32", "--warps", "2", "--batch-size", "2", "--device", "cpu",
            "--quiet"]
    one, two = _single_and_torchrun(run_dec, args, tmp_path)
    assert two["models"][0]["timing"]["world_size"] == 2
    assert two["data"] == one["data"] and two["unreadable"] == one["unreadable"] == [
        {"path": "square/broken.png", "reason": one["unreadable"][0]["reason"]}]
    for a, b in zip(one["models"], two["models"]):
        assert a["per_zoom"] == b["per_zoom"] and len(a["per_zoom"]) == 3
        for key, value in a["metrics"].items():
            assert_metric_close(b["metrics"][key], value, key)
        assert [r["pairs"] for r in a["per_strength"]] == [r["pairs"] for r in b["per_strength"]]
    # Flip rate pairs outputs of one source that sit on different ranks: exact after the gather.
    assert one["models"][1]["metrics"]["flip_rate"] > 0
    assert [m["metrics"]["flip_rate"] for m in two["models"]] == [m["metrics"]["flip_rate"] for m in one["models"]]


def test_torchrun_on_the_fly_zoom_sweep_matches_single_process(tmp_path, run_dec):
    """`--zoom` on a plain tree: the sweep's outputs of one source land on different ranks."""
    from test_evaluate import CLASSES, make_tree  # noqa: E402

    data = make_tree(tmp_path / "plain", per_class=2, odd_modes=False, corrupt=False)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    args = ["evaluate", "test_vit", "--random-init", "--class-map", str(classes), "--data", str(data), "--img-size", "32",
            "--zoom", "0.7,1,1.4", "--center", "0.4,0.5", "--batch-size", "2", "--device", "cpu", "--quiet"]
    one, two = (report["models"][0] for report in _single_and_torchrun(run_dec, args, tmp_path))
    assert two["timing"]["world_size"] == 2 and len(one["per_zoom"]) == 3
    assert two["per_zoom"] == one["per_zoom"]
    assert two["metrics"]["flip_rate"] == one["metrics"]["flip_rate"]
    assert two["metrics"]["zoom_consistency_min"] == one["metrics"]["zoom_consistency_min"]


def test_torchrun_rank_whose_whole_shard_is_unreadable(tmp_path, run_dec):
    """Every image of rank 1's shard is corrupt: no rank hangs or fails alone; the report lists them
    as unreadable, exactly as one process does, and the readable shard is evaluated."""
    from test_evaluate import CLASSES, make_tree  # noqa: E402

    data = make_tree(tmp_path / "plain", per_class=2, odd_modes=False, corrupt=False)
    files = sorted(p for p in data.rglob("*.png"))
    for path in files[1::2]:  # shard_indices(n, 1, 2): the odd indices of the sorted samples
        path.write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    args = ["evaluate", "test_resnet", "--random-init", "--class-map", str(classes), "--data", str(data),
            "--img-size", "32", "--warps", "1", "--batch-size", "2", "--device", "cpu", "--quiet"]
    one, two = _single_and_torchrun(run_dec, args, tmp_path)
    bad = sorted(str(p.relative_to(data)) for p in files[1::2])
    assert sorted(u["path"] for u in one["unreadable"]) == bad
    assert two["unreadable"] == one["unreadable"] and two["data"] == one["data"]
    assert two["models"][0]["metrics"]["images"] == one["models"][0]["metrics"]["images"] == len(files) - len(bad)
