"""Careless sizes and output folders: `dec evaluate` / `dec finetune` refuse a batch that cannot fit in
memory (instead of meeting the out-of-memory killer), and `dec finetune` refuses an OUT below a file or
a `--resume` with nothing to resume. Real photographs, real timm models, real files."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch

from dec_cli.core.memory import EVAL_ACTIVATIONS, available_memory, batch_bytes, check_batch_fits

DATA = Path(__file__).parent / "data"
PHOTOS = {"cat": "photos/animals/chelsea.png", "horse": "photos/animals/horse.png"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """DATA/train and DATA/val, two classes of one real photograph each."""
    root = tmp_path_factory.mktemp("photos")
    for split in ("train", "val"):
        for name, rel in PHOTOS.items():
            (root / split / name).mkdir(parents=True)
            shutil.copy(DATA / rel, root / split / name / "a.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from dec_cli.backbones.backbone import create_backbone
    from dec_cli.backbones.checkpoint import save_model

    torch.manual_seed(0)
    model = create_backbone("test_resnet", num_classes=2)
    model.dec_info["class_names"] = sorted(PHOTOS)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_model(model, path)
    return path


def one_line_usage_error(result, *needles: str) -> str:
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_available_memory_reads_this_machine():
    have = available_memory(torch.device("cpu"))
    total = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    assert have is not None and 0 < have <= total


def test_estimate_scales_with_batch_size_and_pixels():
    assert batch_bytes(2, (3, 10, 20), 5) == 2 * 3 * 10 * 20 * 4 * 5
    check_batch_fits(32, (3, 224, 224), torch.device("cpu"), tensors=2 + 4 + EVAL_ACTIVATIONS)  # ordinary: fits


def test_evaluate_refuses_a_size_that_cannot_fit_quickly(run_dec, photos, checkpoint):
    start = time.perf_counter()
    result = run_dec("evaluate", checkpoint, "--data", photos / "val", "--img-size", "100000", "--device", "cpu")
    line = one_line_usage_error(result, "100000 x 100000", "GiB", "--batch-size", "--img-size")
    assert time.perf_counter() - start < 30, line  # refused up front, nothing of that size was allocated
    # the same data at an ordinary size runs
    assert run_dec("evaluate", checkpoint, "--data", photos / "val", "--img-size", "32", "--warps", "1",
                   "--quiet").code == 0


def test_finetune_refuses_a_size_that_cannot_fit_quickly(run_dec, photos, tmp_path):
    start = time.perf_counter()
    out = tmp_path / "run"
    result = run_dec("finetune", "test_vit", photos, "-o", out, "--random-init", "--num-classes", "2",
                     "--img-size", "100000",
                     "--device", "cpu")
    one_line_usage_error(result, "needs about", "--batch-size")
    assert time.perf_counter() - start < 30 and not out.exists()


def test_finetune_out_below_a_file_is_a_usage_error(run_dec, photos, tmp_path):
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder")
    result = run_dec("finetune", "test_resnet", photos, "-o", blocker / "sub", "--random-init", "--num-classes", "2")
    one_line_usage_error(result, "is a file, not a folder")
    assert blocker.read_text() == "not a folder"


def test_finetune_resume_with_nothing_to_resume_is_refused(run_dec, photos, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (empty, tmp_path / "missing"):
        one_line_usage_error(run_dec("finetune", "test_resnet", photos, "-o", out, "--resume", "--num-classes", "2"),
                             "holds no run to continue", "drop --resume")
    # a run cut before its first epoch was saved: say so, and how to start it again
    (empty / "metrics.csv").write_text("epoch\n")
    one_line_usage_error(run_dec("finetune", "test_resnet", photos, "-o", empty, "--resume", "--num-classes", "2"),
                         "before its first epoch was saved")
    assert not (tmp_path / "missing").exists() and sorted(p.name for p in empty.iterdir()) == ["metrics.csv"]
