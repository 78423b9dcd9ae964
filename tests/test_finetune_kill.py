"""`dec finetune`'s run folder has one commit point per epoch: a SIGKILL at any write resumes exactly.

A forked child runs a real fine-tuning and sends itself a real SIGKILL just before
or just after its Nth rename into the run folder (every file there is written
through a temporary name and a rename); the parent then resumes the folder with
``--resume`` and compares it with an uninterrupted run, bit for bit. No timing.
"""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_finetune import make_dec_checkpoint, make_shapes

OPTIONS = {"epochs": 2, "lr": 5e-4, "dec_lr": 1e-3, "warmup_epochs": 1, "aug_prob": 0.5, "eq_weight": 0.2,
           "batch_size": 6, "seed": 0, "workers": 0, "device": "cpu"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    shapes = make_shapes(root / "shapes", n_train=4, n_val=2)
    ckpt = make_dec_checkpoint(root / "dec.safetensors")
    from dec_cli.jobs.finetune import finetune

    full = root / "full"
    finetune(str(ckpt), shapes, full, dict(OPTIONS))
    return shapes, ckpt, full


def _killed_at(n: int, before: bool, ckpt: Path, shapes: Path, out: Path) -> bool:
    """Run the fine-tuning in a forked child that SIGKILLs itself at its ``n``-th rename into ``out``;
    returns whether it was killed (False: the run has fewer renames and finished)."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            from dec_cli.jobs.finetune import finetune

            real, count = os.replace, [0]

            def replace(src, dst):
                if Path(dst).parent == out:
                    count[0] += 1
                if count[0] == n and before:
                    os.kill(os.getpid(), signal.SIGKILL)
                real(src, dst)
                if count[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)

            os.replace = replace
            finetune(str(ckpt), shapes, out, dict(OPTIONS))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k != "images_per_s"} for row in csv.DictReader(fh)]


def _same_weights(a: Path, b: Path) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("before", [False, True], ids=["after-rename", "before-rename"])
def test_sigkill_at_every_write_resumes_bit_identical(setup, tmp_path, before, run_dec):
    from dec_cli.jobs.finetune import finetune

    shapes, ckpt, full = setup
    n = 0
    while True:
        n += 1
        out = tmp_path / f"cut{n}"
        if not _killed_at(n, before, ckpt, shapes, out):
            break
        assert out.is_dir()
        recorded = (out / "state.pt").exists()
        if recorded:  # a second start without --resume never overwrites the run; it names --resume
            r = run_dec("finetune", ckpt, shapes, "-o", out, "--device", "cpu")
            assert r.code == 2 and "--resume" in r.err, r.err
        # --resume alone continues with the recorded options; killed before they were recorded (only the
        # start record's temporary file is there), the same command with --resume starts the run
        summary = finetune(str(ckpt), shapes, out, {} if recorded else dict(OPTIONS), resume=True)
        assert summary["epochs"] == OPTIONS["epochs"]
        _same_weights(full / "last.safetensors", out / "last.safetensors")
        _same_weights(full / "best.safetensors", out / "best.safetensors")
        assert _rows(full) == _rows(out), n
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in full.iterdir())
    assert n >= 8  # the start record and, per epoch, metrics, last, (best,) state: every one was a kill point
