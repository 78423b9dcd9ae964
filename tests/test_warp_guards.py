"""Careless settings: duplicate zoom factors, masks two images would share, and absurd warp
settings (scale range, grid, rows, zoom, radius) are refused before any work, in every command
that takes them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dec_cli.jobs import demo
from test_finetune import make_dec_checkpoint, make_shapes

DATA = Path(__file__).parent / "data"
NPZ = demo.DATA_DIR / "mnist-8k.npz"


def one_line_usage_error(result, *needles: str) -> None:
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def small(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(DATA / "photos/animals/chelsea.png", src / "chelsea.png")
    return src


# --------------------------------------------------------------------------- duplicate zoom factors


@pytest.mark.parametrize("zooms, name", [("1,1", "z1"), ("0.8,1,1.0000001", "z1"), ("0.5,1.25,1.2500001", "z1.25")])
def test_zoom_factors_that_name_one_output_are_refused(run_dec, small, tmp_path, zooms, name):
    dst = tmp_path / "dst"
    one_line_usage_error(run_dec("warp", small, dst, "--zoom", zooms), "--zoom", f".{name}.")
    assert not dst.exists()


def test_digits_refuses_duplicate_zoom_factors(run_dec, tmp_path):
    one_line_usage_error(run_dec("digits", NPZ, tmp_path / "out", "--zoom", "1,1.0000001"), "distinct")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- mask collisions


@pytest.mark.parametrize("workers", ["1", "2"])
def test_two_images_never_share_one_warped_mask(run_dec, tmp_path, workers):
    src, masks, dst = tmp_path / "img", tmp_path / "masks", tmp_path / "dst"
    (src / "pets").mkdir(parents=True)
    (masks / "pets").mkdir(parents=True)
    photo = Image.open(DATA / "photos/animals/chelsea.png").convert("RGB")
    photo.save(src / "pets/a.png")
    photo.save(src / "pets/a.jpg", quality=90)
    photo.save(src / "pets/b.png")
    label = Image.fromarray((np.asarray(photo.convert("L")) > 128).astype(np.uint8) * 255)
    label.save(masks / "pets/a.png")
    label.save(masks / "pets/b.png")
    result = run_dec("warp", src, dst, "--masks", masks, "--workers", workers)
    one_line_usage_error(result, "masks/pets/a.png matches pets/a.jpg and pets/a.png")
    assert not (dst / "masks").exists() and not (dst / "manifest.jsonl").exists()
    # without the clash every image has its own warped mask
    (src / "pets/a.jpg").unlink()
    assert run_dec("warp", src, dst, "-q", "--masks", masks, "--copies", "2").code == 0
    records = [json.loads(line) for line in (dst / "manifest.jsonl").read_text().splitlines()]
    mask_names = [r["mask"] for r in records]
    assert len(set(mask_names)) == len(records) == 4
    assert all((dst / m).is_file() for m in mask_names)


def test_two_masks_for_one_image_are_refused(run_dec, tmp_path):
    src, masks = tmp_path / "img", tmp_path / "masks"
    src.mkdir()
    masks.mkdir()
    shutil.copy(DATA / "photos/animals/chelsea.png", src / "a.png")
    label = Image.new("L", (128, 85), 255)
    label.save(masks / "a.png")
    label.save(masks / "a.bmp")
    one_line_usage_error(run_dec("warp", src, tmp_path / "dst", "--masks", masks), "2 masks match a.png")


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("args, needle", [
    (["--scale-range", "1e-300,1e300"], "[0.05, 20]"),
    (["--scale-range", "0.04,1.2"], "[0.05, 20]"),
    (["--scale-range", "0.8,21"], "[0.05, 20]"),
    (["--rows", "100000"], "--rows in 1..64"),
    (["--grid", "65"], "--grid must lie in 1..64"),
    (["--grid", "0"], "--grid must lie in 1..64"),
    (["--zoom", "0.01,1"], "--zoom factors must lie in [0.05, 20]"),
    (["--zoom", "1,1e300"], "--zoom factors must lie in [0.05, 20]"),
    (["--zoom", "1.1", "--radius", "1e-9"], "--radius must lie in [0.02, 0.5]"),
    (["--zoom", "1.8", "--radius", "0.25", "--center", "0.1,0.5"], "beside the disc (hint: use --radius 0.05"),
])
def test_absurd_warp_settings_are_refused_before_any_work(run_dec, small, tmp_path, args, needle):
    dst = tmp_path / "dst"
    one_line_usage_error(run_dec("warp", small, dst, *args), needle)
    assert not dst.exists()


def test_largest_settings_keep_manifest_lines_small(run_dec, small, tmp_path):
    dst = tmp_path / "dst"
    assert run_dec("warp", small, dst, "-q", "--grid", "64", "--rows", "64", "--scale-range", "0.05,20").code == 0
    line = (dst / "manifest.jsonl").read_text()
    assert len(line) < 200_000
    record = json.loads(line)
    assert record["grid"] == 64 and record["rows"] == 64


def test_images_smaller_than_the_grid_are_listed(run_dec, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(DATA / "photos/gray", src)  # camera.png 128 x 128, multipage.tif 10 x 15
    dst = tmp_path / "dst"
    result = run_dec("warp", src, dst, "--grid", "12", "--json", tmp_path / "s.json")
    assert result.code == 1
    bad = json.loads((tmp_path / "s.json").read_text())["bad"]
    assert bad == [{"path": "multipage.tif",
                    "reason": "10x15 pixels is too small for --grid 12 --rows 1 (at least one pixel per interval "
                              "and row)"}]
    assert (dst / "camera.png").is_file() and not (dst / "multipage.tif").exists()
    assert run_dec("warp", src, tmp_path / "dst2", "-q", "--grid", "10").code == 0


@pytest.fixture(scope="module")
def shapes_and_ckpt(tmp_path_factory):
    base = tmp_path_factory.mktemp("guards")
    return make_shapes(base / "shapes", n_train=1, n_val=1), make_dec_checkpoint(base / "dec.safetensors")


@pytest.mark.parametrize("args, needle", [
    (["--scale-range", "1e-300,1e300"], "[0.05, 20]"),
    (["--rows", "65"], "--rows in 1..64"),
    (["--grid", "100000"], "--grid must lie in 1..64"),
])
def test_evaluate_and_finetune_refuse_absurd_warp_settings(run_dec, shapes_and_ckpt, tmp_path, args, needle):
    shapes, ckpt = shapes_and_ckpt
    one_line_usage_error(run_dec("evaluate", ckpt, "--data", shapes / "val", "--json", tmp_path / "r.json", *args),
                         needle)
    assert not (tmp_path / "r.json").exists()
    one_line_usage_error(run_dec("finetune", ckpt, shapes, "-o", tmp_path / "run", "--epochs", "1", *args), needle)
    assert not (tmp_path / "run").exists()


def test_digits_refuses_an_absurd_scale_range(run_dec, tmp_path):
    one_line_usage_error(run_dec("digits", NPZ, tmp_path / "out", "--scale-range", "1e-300,1e300"), "[0.05, 20]")
    assert not (tmp_path / "out").exists()
