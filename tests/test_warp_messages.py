"""`dec warp` messages name their real cause: missing boxes, empty --masks, a completed job rerun."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

PHOTOS = Path(__file__).parent / "data" / "photos" / "animals"


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    shutil.copytree(PHOTOS, root)
    return root


def test_a_missing_box_is_named_not_called_unreadable(run_dec, src, tmp_path):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"chelsea.png": [10, 10, 60, 60]}))
    result = run_dec("warp", src, tmp_path / "out", "--zoom", "0.8,1", "--center", "object", "--boxes", boxes, "-q")
    assert result.code == 1
    last = result.err.strip().splitlines()[-1]
    assert "no box" in last and "could not be read" not in last


def test_an_empty_masks_folder_is_a_usage_error(run_dec, src, tmp_path):
    (tmp_path / "masks").mkdir()
    result = run_dec("warp", src, tmp_path / "out", "--masks", tmp_path / "masks", "-q")
    assert result.code == 2
    assert result.err.startswith("error: --masks") and "no mask named like" in result.err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_rerunning_a_completed_job_with_a_bad_file_does_not_call_it_interrupted(run_dec, src, tmp_path):
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "out"
    assert run_dec("warp", src, out, "-q").code == 1
    again = run_dec("warp", src, out, "-q")
    assert again.code == 2
    assert "completed" in again.err and "interrupted" not in again.err
