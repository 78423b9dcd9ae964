"""`dec finetune` under torchrun: two CPU processes (gloo), DistributedSampler, only rank 0 writes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_finetune import make_dec_checkpoint, make_shapes

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on Linux/macOS")
def test_two_process_torchrun_finishes_and_only_rank0_writes(tmp_path):
    data = make_shapes(tmp_path / "data", n_train=6, n_val=3)
    ckpt = make_dec_checkpoint(tmp_path / "dec.safetensors")
    out = tmp_path / "run"
    summary = tmp_path / "summary.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dec_cli", "finetune", str(ckpt), str(data), "-o", str(out), "--epochs", "2", "--batch-size", "4",
           "--device", "cpu", "--seed", "3", "--aug-prob", "0.5", "--eq-weight", "0.1", "--json", str(summary)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(summary.read_text())
    assert s["world_size"] == 2
    # rank 0 reports the whole (all-reduced) data, each image counted once in validation
    assert s["train_images"] == 18 and s["val_images"] == 9
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # val accuracy and consistency are multiples of 1/9: all ranks' counts were summed
    for r in rows:
        for key in ("val_acc", "val_consistency"):
            assert abs(float(r[key]) * 9 - round(float(r[key]) * 9)) < 1e-3
    # only rank 0 wrote: exactly the expected files, no temporaries, one summary line on the console
    assert sorted(p.name for p in out.iterdir()) == ["best.safetensors", "last.safetensors", "metrics.csv", "state.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "dec.safetensors", "run", "summary.json"]
    console = proc.stdout + proc.stderr
    assert console.count("best val acc") == 1 and console.count("epoch 1/2 ") == 1
    from dec_cli.backbones.checkpoint import load_model

    model = load_model(str(out / "last.safetensors"))
    assert model.dec_info["dec"] and model.dec_info["provenance"]["epochs"] == 2


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on Linux/macOS")
def test_torchrun_rank_whose_validation_shard_is_unreadable(tmp_path):
    """Rank 1's whole validation shard is corrupt: the run neither hangs nor fails on one rank alone;
    it finishes, validates on the readable images and lists the others once."""
    data = make_shapes(tmp_path / "data", n_train=4, n_val=2)
    val = sorted((data / "val").rglob("*.png"))
    for path in val[1::2]:  # the odd indices of the sorted validation samples: rank 1's shard
        path.write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    ckpt = make_dec_checkpoint(tmp_path / "dec.safetensors")
    summary = tmp_path / "summary.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dec_cli", "finetune", str(ckpt), str(data), "-o", str(tmp_path / "run"), "--epochs", "1",
           "--batch-size", "2", "--device", "cpu", "--seed", "3", "--json", str(summary)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(summary.read_text())
    listed = sorted(b["path"] for b in s["bad_files"])
    assert listed == sorted(f"val/{p.relative_to(data / 'val').as_posix()}" for p in val[1::2])
    assert len(listed) == len(set(listed))  # each unreadable file named once, not once per rank
