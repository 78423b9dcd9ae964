"""SIGTERM, as schedulers and containers send it, stops every command like Ctrl-C: one line, exit 143.

The signal is real and sent to a real `python -m dec_cli` process once that process
has installed its handler (read from /proc, not guessed from a delay), so it lands
while the command loads or works. Under torchrun every rank stops and rank 0
alone reports; the run folder resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_finetune import make_dec_checkpoint, make_shapes

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning",
       "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status")


def _catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (the SigCgt mask of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def _terminate(args: list, *, cwd: Path) -> tuple[int, str]:
    child = subprocess.Popen([sys.executable, "-m", "dec_cli", *map(str, args)], env=ENV, cwd=cwd,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _catches_sigterm(child.pid):
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.002)
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=60)
    return child.returncode, err


COMMANDS = {
    "warp": (["warp", DATA / "photos", "dst", "--copies", "50"], True),
    "unwarp": (["unwarp", "warped", "dst"], True),
    "evaluate": (["evaluate", "test_resnet", "--random-init", "--data", DATA / "photos", "--warps", "20"], False),
    "retrofit": (["retrofit", "test_vit", "--random-init", "-o", "dst.safetensors"], False),
    "digits": (["digits", REPO / "dec_cli" / "data" / "mnist-8k.npz", "dst"], False),
    "info": (["info", "ckpt.safetensors"], False),
}


@linux_only
@pytest.mark.parametrize("name", list(COMMANDS))
def test_sigterm_stops_each_command_with_one_line_and_exit_143(name, tmp_path):
    args, has_resume = COMMANDS[name]
    (tmp_path / "warped").mkdir()
    (tmp_path / "ckpt.safetensors").write_bytes(b"")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = _terminate(args, cwd=tmp_path)
    assert code == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: terminated (hint: "), lines
    assert ("--resume" in lines[0]) == has_resume, lines[0]
    # nothing half-written: no new file unless it is a resumable job's output folder
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in before]
    assert leftovers in ([], ["dst"] if has_resume else [])
    assert not [p for p in tmp_path.rglob("*") if ".part" in p.name]


@linux_only
def test_sigterm_under_torchrun_stops_every_rank_and_rank0_reports_once(tmp_path):
    """SIGTERM to the whole job (as SLURM's scancel sends it) during epoch 1 of a 2-process gloo run."""
    data = make_shapes(tmp_path / "data", n_train=6, n_val=3)
    ckpt = make_dec_checkpoint(tmp_path / "dec.safetensors")
    out = tmp_path / "run"
    common = ["finetune", str(ckpt), str(data), "-o", str(out), "--batch-size", "2", "--device", "cpu", "--seed", "3"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dec_cli"]
    child = subprocess.Popen([*torchrun, *common, "--epochs", "50"], env=ENV, cwd=tmp_path, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().startswith("fine-tuning ")  # rank 0 prints it as epoch 1 begins
        os.killpg(child.pid, signal.SIGTERM)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
    assert child.returncode != 0  # torchrun's own code (1), after its own SignalException traceback
    stops = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(stops) == 1 and stops[0].startswith("error: terminated (hint: ") and "--resume" in stops[0], err[-3000:]
    assert "Traceback" not in err.split("error: terminated")[0], err[-3000:]  # no rank printed one
    # the run folder resumes (fewer epochs, to be quick; the options recorded at the start are kept)
    proc = subprocess.run([*torchrun, *common, "--resume", "--epochs", "1", "--quiet", "--json", "-"],
                          env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["world_size"] == 2 and summary["options"]["seed"] == 3 and summary["epochs_run"] <= 1
