"""Hostile and careless use of `dec warp` / `dec unwarp`: Ctrl-C, two jobs on one DST, DST around SRC,
--overwrite over files no dec job wrote, --json over inputs and outputs, too many workers, and file names
that could fake output lines. Signals, locks and second processes are real."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LOCK_FILE = ".dec-lock"  # the documented name


@pytest.fixture
def photos(tmp_path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(DATA / "photos", src)
    return src


def dec_child(*args, **kwargs) -> subprocess.Popen:
    """`python -m dec_cli ARGS...` in a child process of its own process group (as a shell job is)."""
    return subprocess.Popen([sys.executable, "-m", "dec_cli", *map(str, args)], env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(condition, child: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert child.poll() is None, f"the child ended early: {child.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def workers_left(group: int, patience: float = 10.0) -> bool:
    """Whether any process of the process group ``group`` is still alive after ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.1)
    return True


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(hint: " in lines[0], lines
    return lines[0]


def sources(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                 (signal.SIGTERM, 143, "terminated")], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_warp_with_one_line_and_its_exit_code(photos, tmp_path, signum, code, word):
    """SIGINT or SIGTERM to the whole process group, as a terminal's Ctrl-C or a scheduler (SLURM's
    scancel, a container stop) sends it: the workers do not print tracebacks, the parent prints one line
    with the --resume hint and exits 130 or 143, nothing half-written stays."""
    dst = tmp_path / "dst"
    child = dec_child("warp", photos, dst, "--copies", "400", "--workers", "2", "-q")
    try:
        wait_for(lambda: dst.is_dir() and any(dst.rglob("*.w*.*")), child)  # workers may still be starting
        os.killpg(child.pid, signum)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert child.returncode == code, err
    line = one_error_line(err)
    assert line.startswith(f"error: {word}") and "--resume" in line
    assert not workers_left(child.pid)
    assert not (dst / "manifest.jsonl").exists() and not (dst / LOCK_FILE).exists()
    assert not [p for p in dst.rglob("*") if ".part" in p.name]


# --------------------------------------------------------------------------- one job per DST


def test_a_second_job_on_the_same_dst_is_refused_and_a_killed_jobs_lock_taken_over(run_dec, photos, tmp_path):
    full, dst = tmp_path / "full", tmp_path / "dst"
    options = ["--copies", "3", "-q"]
    assert run_dec("warp", photos, full, *options).code == 0
    first = dec_child("warp", photos, dst, *options)
    try:
        wait_for(lambda: (dst / LOCK_FILE).exists(), first, timeout=240)
        os.kill(first.pid, signal.SIGSTOP)  # frozen while holding the lock: the second job surely overlaps
        holder = json.loads((dst / LOCK_FILE).read_text())
        assert holder["pid"] == first.pid and holder["command"].startswith("dec warp ")
        second = subprocess.run([sys.executable, "-m", "dec_cli", "warp", photos, dst, "--seed", "2", *options],
                                env=ENV, capture_output=True, text=True, timeout=240)
        assert second.returncode == 2, second.stderr
        line = one_error_line(second.stderr)
        assert "in use by another dec job" in line and f"pid {first.pid}" in line and "dec warp" in line
        # an unwarp into the same DST waits its turn too
        result = run_dec("unwarp", full, dst, "--resume")
        assert result.code == 2 and f"pid {first.pid}" in one_error_line(result.err)
        # a hard kill leaves the lock file behind; the kernel has released the lock itself
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=60)
    assert json.loads((dst / LOCK_FILE).read_text())["pid"] == first.pid
    result = run_dec("warp", photos, dst, *options, "--resume")
    assert result.code == 0, result.err
    assert not (dst / LOCK_FILE).exists()
    assert sources(dst) == sources(full)


def test_the_lock_is_released_after_an_error(run_dec, photos, tmp_path):
    dst = tmp_path / "dst"
    (dst / "animals").mkdir(parents=True)
    (dst / "animals" / "chelsea.png").write_bytes(b"mine")
    assert run_dec("warp", photos, dst, "-q").code == 2
    assert not (dst / LOCK_FILE).exists()


# --------------------------------------------------------------------------- DST around SRC


@pytest.mark.parametrize("command", ["warp", "unwarp"])
@pytest.mark.parametrize("case", ["dst-holds-src", "dst-is-src", "dst-inside-src"])
def test_dst_may_neither_hold_nor_be_nor_lie_in_src(run_dec, photos, tmp_path, command, case):
    base = tmp_path / "base"
    src = base / "s"
    if command == "warp":
        shutil.copytree(photos, src)
    else:
        assert run_dec("warp", photos, src, "-q").code == 0
    dst = {"dst-holds-src": base, "dst-is-src": src, "dst-inside-src": src / "out"}[case]
    before = sources(base)
    for extra in ([], ["--overwrite"], ["--resume"]):
        result = run_dec(command, src, dst, *extra)
        assert result.code == 2, (extra, result.err)
        assert "SRC" in one_error_line(result.err) and "--overwrite" not in result.err
    assert sources(base) == before


def test_masks_and_dst_may_not_nest(run_dec, photos, tmp_path):
    masks = tmp_path / "m" / "masks"
    masks.mkdir(parents=True)
    for inside in (masks / "out", masks.parent):
        result = run_dec("warp", photos, inside, "--masks", masks)
        assert result.code == 2 and "--masks" in one_error_line(result.err)


# --------------------------------------------------------------------------- --overwrite touches only dec outputs


def test_overwrite_and_resume_never_touch_files_no_dec_job_wrote(run_dec, photos, tmp_path):
    dst = tmp_path / "dst"
    (dst / "animals").mkdir(parents=True)
    (dst / "animals" / "chelsea.png").write_bytes(b"my own picture")
    for extra in ([], ["--overwrite"], ["--resume"]):
        result = run_dec("warp", photos, dst, "-q", *extra)
        assert result.code == 2, (extra, result.err)
        line = one_error_line(result.err)
        assert "no dec job wrote" in line and "animals/chelsea.png" in line
    assert (dst / "animals" / "chelsea.png").read_bytes() == b"my own picture"
    # a dec job's own outputs are still replaced by --overwrite
    other = tmp_path / "other"
    assert run_dec("warp", photos, other, "-q").code == 0
    assert run_dec("warp", photos, other, "-q", "--overwrite", "--seed", "5").code == 0


def test_unwarp_overwrites_only_its_own_outputs(run_dec, photos, tmp_path):
    warped, restored = tmp_path / "warped", tmp_path / "restored"
    assert run_dec("warp", photos, warped, "-q").code == 0
    assert run_dec("unwarp", warped, restored, "-q").code == 0
    assert run_dec("unwarp", warped, restored, "-q", "--overwrite").code == 0
    mine = tmp_path / "mine"
    (mine / "gray").mkdir(parents=True)
    (mine / "gray" / "camera.png").write_bytes(b"my own picture")
    result = run_dec("unwarp", warped, mine, "--overwrite")
    assert result.code == 2 and "no dec job wrote" in one_error_line(result.err)
    assert (mine / "gray" / "camera.png").read_bytes() == b"my own picture"


# --------------------------------------------------------------------------- --json


def test_json_may_not_overwrite_sources_or_the_jobs_own_files(run_dec, photos, tmp_path):
    dst = tmp_path / "dst"
    before = sources(photos)
    for target in (photos / "animals" / "chelsea.png", photos / "new.json", dst, dst / "manifest.jsonl",
                   dst / "animals" / "horse.png", dst / LOCK_FILE, dst / ".dec-warp-job.json"):
        result = run_dec("warp", photos, dst, "-q", "--json", target)
        assert result.code == 2, (target, result.err)
        assert "--json" in one_error_line(result.err)
    assert sources(photos) == before and not (dst / "manifest.jsonl").exists()
    assert run_dec("warp", photos, dst, "-q", "--json", dst / "summary.json").code == 0
    restored = tmp_path / "restored"
    for target in (dst / "manifest.jsonl", restored / "gray" / "camera.png"):
        result = run_dec("unwarp", dst, restored, "-q", "--json", target)
        assert result.code == 2 and "--json" in one_error_line(result.err)
    assert json.loads((dst / "summary.json").read_text())["written"] == 6
    assert (dst / "manifest.jsonl").read_text().startswith("{")


def test_other_commands_json_may_not_overwrite_their_own_files(run_dec, tmp_path):
    npz = tmp_path / "digits.npz"
    shutil.copy(Path(__file__).parent.parent / "dec_cli" / "data" / "mnist-8k.npz", npz)
    before = npz.read_bytes()
    (tmp_path / "data").mkdir()
    cases = [
        ["digits", npz, tmp_path / "d", "--json", npz],
        ["retrofit", "test_vit", "--random-init", "-o", tmp_path / "m.safetensors",
         "--json", tmp_path / "m.safetensors"],
        ["finetune", "test_vit", "--random-init", tmp_path / "data", "-o", tmp_path / "run", "--json", tmp_path / "run" / "metrics.csv"],
        ["evaluate", "test_vit", "--random-init", "--data", tmp_path, "--json", tmp_path / "r.json", "--markdown",
         tmp_path / "r.json"],
        ["evaluate", "test_vit", "--random-init", "--data", tmp_path, "--json", tmp_path / "report.json"],
    ]
    for args in cases:
        result = run_dec(*args)
        assert result.code == 2, (args, result.err)
        assert "--json" in one_error_line(result.err) or "--markdown" in result.err, args
    assert npz.read_bytes() == before and not (tmp_path / "m.safetensors").exists()


# --------------------------------------------------------------------------- workers and names


def test_workers_are_capped_at_the_number_of_files(run_dec, tmp_path):
    """One file: one worker (run in this process; no pool of 60 is started; thousands are refused, test_hostile_inputs)."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(DATA / "photos" / "scenes" / "rocket.jpg", src)
    result = run_dec("warp", src, tmp_path / "dst", "--workers", "60", "--json", tmp_path / "s.json")
    assert result.code == 0, result.err
    assert json.loads((tmp_path / "s.json").read_text())["workers"] == 1
    assert "1 (not 60: one per file)" in result.out
    result = run_dec("unwarp", tmp_path / "dst", tmp_path / "back", "--workers", "60", "--json", "-", "-q")
    assert result.code == 0, result.err
    assert json.loads(result.out)["workers"] == 1


def test_control_characters_in_bad_file_names_are_escaped(run_dec, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(DATA / "photos" / "animals" / "horse.png", src / "horse.png")
    evil = "x\nerror: all good, ignore the rest\x1b[2K.png"
    (src / evil).write_bytes(b"not an image")
    result = run_dec("warp", src, tmp_path / "dst", "--json", tmp_path / "s.json")
    assert result.code == 1
    lines = result.err.splitlines()
    assert [line for line in lines if line.startswith("error: ")] == [lines[-1]]
    assert "\x1b" not in result.err and repr(evil) in result.err
    assert json.loads((tmp_path / "s.json").read_text())["bad"][0]["path"] == evil


def test_overwrite_never_replaces_a_foreign_file_where_a_mask_goes(run_dec, tmp_path):
    src, masks, dst = tmp_path / "src", tmp_path / "m" / "masks", tmp_path / "dst"
    shutil.copytree(DATA / "photos" / "animals", src)
    masks.mkdir(parents=True)
    shutil.copy(DATA / "photos" / "gray" / "camera.png", masks / "horse.png")
    assert run_dec("warp", src, tmp_path / "own", "-q", "--masks", masks).code == 0
    assert run_dec("warp", src, tmp_path / "own", "-q", "--masks", masks, "--overwrite").code == 0  # its own outputs
    (dst / "masks").mkdir(parents=True)
    (dst / "masks" / "horse.png").write_bytes(b"my own mask")
    for extra in ([], ["--overwrite"]):
        result = run_dec("warp", src, dst, "-q", "--masks", masks, *extra)
        assert result.code == 2 and "masks/horse.png" in one_error_line(result.err)
    assert (dst / "masks" / "horse.png").read_bytes() == b"my own mask"
