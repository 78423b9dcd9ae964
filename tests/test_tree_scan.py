"""Walking input trees: FIFOs and other non-files are listed, never opened; unreadable folders
(a real non-root permission) and folder link loops are listed; linked folders are followed.
Checked for `dec warp`, `dec unwarp`, `dec evaluate` and `dec finetune`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from dec_cli.backbones.checkpoint import load_model, save_model
from dec_cli.trees.data import load_image, scan_image_folder
from test_evaluate import CLASSES, make_tree

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent
NOBODY_SCRIPT = Path(__file__).parent / "nobody.py"
NOBODY = 65534
TIMEOUT = 240  # an opened FIFO blocks forever: the alarm (or the child's timeout) turns that into a failure


def dec_child(*args, as_nobody: bool = False, warmup: list | None = None) -> subprocess.CompletedProcess:
    """Run `dec ARGS` in a child process (as the user nobody when asked and we are root), with a timeout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    args = [str(a) for a in args]
    if as_nobody and os.geteuid() == 0:
        cmd = [sys.executable, str(NOBODY_SCRIPT), json.dumps([str(a) for a in warmup or args]), *args]
    else:
        cmd = [sys.executable, "-m", "dec_cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


class Hung(BaseException):
    """Raised by the alarm when a command blocks (a BaseException: the CLI must not turn it into an exit code)."""


@contextlib.contextmanager
def deadline(seconds: int = TIMEOUT):
    """Fail instead of hanging: an opened FIFO blocks forever, and the alarm interrupts it."""
    def ring(signum, frame):
        raise Hung(f"still running after {seconds} s: something opened a FIFO")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def photos(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("chelsea.png", "horse.png"):
        shutil.copy(DATA / "photos/animals" / name, folder / name)
    return folder


def manifest(dst: Path) -> list[dict]:
    return [json.loads(line) for line in (dst / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture
def open_tmp():
    """A temporary folder the user nobody can enter and write (pytest's tmp_path is private to root)."""
    if os.geteuid() == 0:
        probe = subprocess.run([sys.executable, "-c", f"import os; os.setgroups([]); os.setgid({NOBODY}); "
                                f"os.setuid({NOBODY})"], capture_output=True)
        if probe.returncode != 0:
            pytest.skip("cannot drop root privileges to nobody here")
    base = Path(tempfile.mkdtemp(prefix="dec-scan-"))
    os.chmod(base, 0o777)
    try:
        yield base
    finally:
        for folder, _, _ in os.walk(base):
            os.chmod(folder, 0o755)
        shutil.rmtree(base)


# --------------------------------------------------------------------------- FIFOs and dangling links


def test_a_fifo_named_like_an_image_is_listed_not_opened(run_dec, tmp_path):
    src = photos(tmp_path / "src")
    os.mkfifo(src / "x.png")
    os.symlink("nowhere.png", src / "gone.png")
    dst = tmp_path / "dst"
    with deadline():
        result = run_dec("warp", src, dst, "--quiet", "--json", tmp_path / "s.json")
        skipped = run_dec("warp", src, tmp_path / "dst2", "--quiet", "--skip-bad")
    assert result.code == 1, result.err
    bad = {b["path"]: b["reason"] for b in json.loads((tmp_path / "s.json").read_text())["bad"]}
    assert bad == {"x.png": "not a regular file (a FIFO)", "gone.png": "dangling symbolic link"}
    assert "x.png: not a regular file (a FIFO)" in result.err
    assert [r["src"] for r in manifest(dst)] == ["chelsea.png", "horse.png"]
    assert skipped.code == 0, skipped.err


def test_unwarp_lists_a_fifo_in_place_of_an_output(run_dec, tmp_path):
    src, warped = photos(tmp_path / "src"), tmp_path / "warped"
    assert run_dec("warp", src, warped, "--quiet").code == 0
    (warped / "horse.png").unlink()
    os.mkfifo(warped / "horse.png")
    with deadline():
        result = run_dec("unwarp", warped, tmp_path / "restored", "--quiet", "--json", "-")
    assert result.code == 1, result.err
    assert json.loads(result.out)["bad"] == [{"path": "horse.png", "reason": "not a regular file (a FIFO)"}]
    assert (tmp_path / "restored/chelsea.png").is_file()


def test_evaluate_scan_lists_fifos_and_dangling_links(tmp_path):
    root = make_tree(tmp_path / "tree", corrupt=False)
    os.mkfifo(root / CLASSES[0] / "pipe.jpg")
    os.symlink("missing.png", root / CLASSES[1] / "gone.png")
    data = scan_image_folder(root)
    assert data.unreadable == [{"path": "circle/pipe.jpg", "reason": "not a regular file (a FIFO)"},
                               {"path": "square/gone.png", "reason": "dangling symbolic link"}]
    assert len(data.samples) == 9
    with pytest.raises(OSError, match="FIFO"):  # the decoder refuses it too, without opening it
        load_image(root / CLASSES[0] / "pipe.jpg")


# --------------------------------------------------------------------------- unreadable folders


def test_an_unreadable_folder_is_listed_as_bad(open_tmp):
    src = photos(open_tmp / "src")
    photos(src / "locked")
    photos(open_tmp / "warmup")
    for folder, _, files in os.walk(src):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(Path(folder) / name, 0o644)
    os.chmod(src / "locked", 0o000)
    dst = open_tmp / "dst"
    result = dec_child("warp", src, dst, "--json", open_tmp / "s.json", as_nobody=True,
                       warmup=["warp", open_tmp / "warmup", open_tmp / "warmup-dst"])
    assert result.returncode == 1, result.stderr
    summary = json.loads((open_tmp / "s.json").read_text())
    assert summary["bad"] == [{"path": "locked/", "reason": "cannot read folder: Permission denied"}]
    assert "locked/: cannot read folder: Permission denied" in result.stderr
    assert sorted(p.name for p in dst.iterdir()) == [".dec-warp-job.json", "chelsea.png", "horse.png",
                                                      "manifest.jsonl"]
    skip = dec_child("warp", src, open_tmp / "dst2", "--quiet", "--skip-bad", as_nobody=True,
                     warmup=["warp", open_tmp / "warmup", open_tmp / "warmup-dst3"])
    assert skip.returncode == 0, skip.stderr


def test_evaluate_lists_an_unreadable_class_subfolder(open_tmp):
    root = make_tree(open_tmp / "tree", corrupt=False)
    make_tree(open_tmp / "tree" / CLASSES[2] / "locked", corrupt=False)
    torch.manual_seed(0)
    ckpt = open_tmp / "m.safetensors"
    save_model(load_model("test_resnet", num_classes=3), ckpt, class_names=CLASSES)
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(Path(folder) / name, 0o644)
    os.chmod(ckpt, 0o644)
    os.chmod(root / CLASSES[2] / "locked", 0o000)
    args = ["evaluate", ckpt, "--data", root, "--img-size", "32", "--warps", "1", "--quiet",
            "--json", open_tmp / "report.json", "--fail-if", "unreadable>0"]
    # the warm-up decodes every image (PNG and JPEG), so nobody needs no module it cannot read
    result = dec_child(*args, as_nobody=True, warmup=args[:-4])
    assert result.returncode == 1, result.stderr  # the --fail-if rule holds
    assert "unreadable" in result.stderr
    doc = json.loads((open_tmp / "report.json").read_text())
    assert doc["unreadable"] == [{"path": "stripes/locked/", "reason": "cannot read folder: Permission denied"}]
    assert doc["data"]["unreadable"] == 1 and doc["data"]["evaluated"] == 9


# --------------------------------------------------------------------------- linked folders


def test_linked_folders_are_followed_and_loops_listed(run_dec, tmp_path):
    src = photos(tmp_path / "src")
    photos(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", src / "linked")
    os.symlink("..", src / "up")  # above SRC: would walk SRC's parent, SRC included
    (src / "deep").mkdir()
    os.symlink(src, src / "deep" / "loop")
    dst = tmp_path / "dst"
    result = run_dec("warp", src, dst, "--quiet", "--json", "-")
    assert result.code == 1, result.err
    summary = json.loads(result.out)
    loop = "symbolic link loop: leads back to an enclosing folder, not followed"
    assert summary["bad"] == [{"path": "deep/loop/", "reason": loop}, {"path": "up/", "reason": loop}]
    srcs = [r["src"] for r in manifest(dst)]
    assert srcs == ["chelsea.png", "horse.png", "linked/chelsea.png", "linked/horse.png"]
    assert (dst / "linked/horse.png").is_file() and not (dst / "deep").exists()


def test_evaluate_follows_linked_class_folders_and_lists_loops(tmp_path):
    root = make_tree(tmp_path / "tree", corrupt=False)
    extra = make_tree(tmp_path / "extra", corrupt=False)
    os.symlink(extra / CLASSES[0], root / CLASSES[0] / "more")
    os.symlink(root, root / CLASSES[1] / "loop")
    data = scan_image_folder(root)
    assert len(data.samples) == 12
    assert sum(s.rel.startswith("circle/more/") for s in data.samples) == 3
    assert [b["path"] for b in data.unreadable] == ["square/loop/"]


def test_finetune_lists_what_its_scan_cannot_read(run_dec, tmp_path):
    from test_finetune import CLASSES as SHAPES, make_dec_checkpoint, make_shapes

    data = make_shapes(tmp_path / "shapes", n_train=2, n_val=1)
    os.mkfifo(data / "train" / SHAPES[0] / "pipe.png")
    ckpt = make_dec_checkpoint(tmp_path / "dec.safetensors")
    result = run_dec("finetune", ckpt, data, "-o", tmp_path / "run", "--epochs", "1", "--batch-size", "6",
                     "--workers", "0", "--device", "cpu", "--json", "-", "--quiet")
    assert result.code == 0, result.err
    bad = json.loads(result.out)["bad_files"]
    assert bad == [{"path": f"train/{SHAPES[0]}/pipe.png", "reason": "not a regular file (a FIFO)"}]
