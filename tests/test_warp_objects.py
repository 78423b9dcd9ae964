"""`dec warp --zoom ... --center object` on real photographs: the zoom disc sits on each image's
object (from a drawn mask, a boxes JSON or a COCO file), bad objects are listed, bad files and
options are one-line usage errors, and `dec unwarp` inverts the object zooms."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dec_cli.trees.objects import MAX_ZOOMED_DIAMETER, MIN_RADIUS, default_radius
from dec_cli.warps.zoomaxis import fit_radius
from test_warp_cli import psnr_interior  # tests/ is on sys.path under pytest

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).parent.parent / "examples" / "photos"
# coffee.png is 128 x 85; the object box is off-centre, in the upper right (x0, y0, x1, y1).
BOX = (80, 12, 104, 30)
W, H = 128, 85


def manifest(dst: Path) -> dict[str, dict]:
    return {r["dst"]: r for r in map(json.loads, (dst / "manifest.jsonl").read_text().splitlines())}


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def nonzero_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return cols[0], rows[0], cols[-1] + 1, rows[-1] + 1


@pytest.fixture
def coffee(tmp_path) -> Path:
    """SRC with one real photo under a subfolder, and a mask drawn as a filled rectangle off-centre."""
    src, masks = tmp_path / "src", tmp_path / "masks"
    (src / "scenes").mkdir(parents=True)
    (masks / "scenes").mkdir(parents=True)
    shutil.copy(DATA / "photos/scenes/coffee.png", src / "scenes/coffee.png")
    mask = np.zeros((H, W), np.uint8)
    x0, y0, x1, y1 = BOX
    mask[y0:y1, x0:x1] = 255
    Image.fromarray(mask).save(masks / "scenes/coffee.png")
    return src


def test_a_mask_centres_the_zoom_disc_on_its_object(run_dec, coffee, tmp_path):
    dst = tmp_path / "dst"
    result = run_dec("warp", coffee, dst, "-q", "--zoom", "0.8,1,1.25", "--center", "object",
                     "--masks", tmp_path / "masks")
    assert result.code == 0, result.err
    records = manifest(dst)
    x0, y0, x1, y1 = BOX
    half_diagonal = math.hypot(x1 - x0, y1 - y0) / 2
    for rec in records.values():  # every factor of the image has the same disc: the box's centre
        assert rec["center"] == pytest.approx([(x0 + x1) / 2 / W, (y0 + y1) / 2 / H])
        assert rec["radius"] == pytest.approx(half_diagonal / min(W, H))
        assert rec["radius"] * min(W, H) >= max(x1 - x0, y1 - y0) / 2  # the disc covers the box
    src_px = pixels(coffee / "scenes/coffee.png")
    assert np.array_equal(pixels(dst / "scenes/coffee.z1.png"), src_px)
    big = pixels(dst / "scenes/coffee.z1.25.png")
    diff = np.abs(big - src_px).max(axis=2)
    # the object is magnified in place: far from it (lower left) the output is the input
    assert diff[52:, :56].max() == 0
    assert diff[y0:y1, x0:x1].mean() > 10
    # the warped mask shows where the object went: 1.25 times as wide and tall, still around its centre
    warped = np.asarray(Image.open(dst / "masks/scenes/coffee.z1.25.png"))
    wx0, wy0, wx1, wy1 = nonzero_box(warped)
    assert 1.15 <= (wx1 - wx0) / (x1 - x0) <= 1.35 and 1.15 <= (wy1 - wy0) / (y1 - y0) <= 1.35
    assert abs((wx0 + wx1) / 2 - (x0 + x1) / 2) <= 4 and abs((wy0 + wy1) / 2 - (y0 + y1) / 2) <= 4
    small = np.asarray(Image.open(dst / "masks/scenes/coffee.z0.8.png"))
    assert (small > 0).sum() < 0.8 * (x1 - x0) * (y1 - y0)


def test_boxes_json_and_coco_give_the_mask_centre_and_the_same_pixels(run_dec, coffee, tmp_path):
    by_mask, by_json, by_coco = tmp_path / "mask", tmp_path / "json", tmp_path / "coco"
    zoom = ("--zoom", "0.9,1.2", "--center", "object")
    assert run_dec("warp", coffee, by_mask, "-q", *zoom, "--masks", tmp_path / "masks").code == 0
    x0, y0, x1, y1 = BOX
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"./scenes/coffee.png": list(BOX), "scenes/not-there.png": [0, 0, 1, 1]}))
    assert run_dec("warp", coffee, by_json, "-q", *zoom, "--boxes", boxes).code == 0
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "scenes/coffee.png", "width": W, "height": H}],
        "annotations": [{"id": 1, "image_id": 7, "bbox": [5, 50, 20, 20], "category_id": 1},
                        {"id": 2, "image_id": 7, "bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": 2}],
        "categories": [{"id": 1, "name": "spoon"}, {"id": 2, "name": "cup"}]}))
    assert run_dec("warp", coffee, by_coco, "-q", *zoom, "--boxes", coco).code == 0
    expected = manifest(by_mask)
    for dst in (by_json, by_coco):
        got = manifest(dst)
        assert got.keys() == expected.keys()
        for name, rec in got.items():
            assert rec["center"] == expected[name]["center"] and rec["radius"] == expected[name]["radius"]
            assert (dst / name).read_bytes() == (by_mask / name).read_bytes()


def test_resume_recentres_images_whose_outputs_are_already_there(run_dec, coffee, tmp_path):
    masks = tmp_path / "masks"
    shutil.copy(DATA / "photos/animals/chelsea.png", coffee / "chelsea.png")
    mask = np.zeros((85, 128), np.uint8)
    mask[20:60, 10:50] = 3
    Image.fromarray(mask).save(masks / "chelsea.png")
    args = ("-q", "--zoom", "1.2", "--center", "object", "--masks", masks)
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run_dec("warp", coffee, full, *args).code == 0
    assert run_dec("warp", coffee, cut, *args).code == 0
    (cut / "scenes/coffee.z1.2.png").unlink()
    (cut / "manifest.jsonl").unlink()
    assert run_dec("warp", coffee, cut, *args, "--resume").code == 0
    assert (cut / "manifest.jsonl").read_bytes() == (full / "manifest.jsonl").read_bytes()
    assert manifest(cut)["chelsea.z1.2.png"]["center"] == pytest.approx([30 / 128, 40 / 85])
    assert (cut / "scenes/coffee.z1.2.png").read_bytes() == (full / "scenes/coffee.z1.2.png").read_bytes()


def test_radius_overrides_the_box_and_a_huge_box_is_clamped(run_dec, coffee, tmp_path):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"scenes/coffee.png": list(BOX)}))
    fixed = tmp_path / "fixed"
    assert run_dec("warp", coffee, fixed, "-q", "--zoom", "1.25", "--center", "object", "--boxes", boxes,
                   "--radius", "0.2").code == 0
    rec = manifest(fixed)["scenes/coffee.z1.25.png"]
    assert rec["center"] == pytest.approx([92 / W, 21 / H])
    # 21 px from the top edge, a radius of 0.2 (17 px) has no room to zoom in place: it is clamped
    assert rec["radius"] == pytest.approx(fit_radius([1.25], rec["center"], 0.2, (H, W))) and rec["radius"] < 0.2
    boxes.write_text(json.dumps({"scenes/coffee.png": [0, 0, W, H]}))
    whole = tmp_path / "whole"
    assert run_dec("warp", coffee, whole, "-q", "--zoom", "1.25", "--center", "object", "--boxes", boxes).code == 0
    rec = manifest(whole)["scenes/coffee.z1.25.png"]
    assert rec["radius"] == pytest.approx(MAX_ZOOMED_DIAMETER / 2 / 1.25) and rec["center"] == [0.5, 0.5]


def test_default_radius_rule():
    assert default_radius((0, 0, 24, 32), (100, 50), 1.0) == pytest.approx(20 / 50)  # half diagonal / short side
    assert default_radius((0, 0, 3, 4), (100, 50), 1.5) == pytest.approx(2.5 / 50)
    assert default_radius((0, 0, 100, 50), (100, 50), 0.8) == 0.5  # the engine's largest radius
    assert default_radius((0, 0, 100, 50), (100, 50), 1.0) == pytest.approx(0.45)  # room outside the disc
    assert default_radius((0, 0, 100, 50), (100, 50), 1.8) == pytest.approx(0.25)  # room outside the disc
    assert default_radius((10, 10, 10.2, 10.2), (100, 50), 1.0) == MIN_RADIUS


# --------------------------------------------------------------------------- bad objects and bad files


def test_images_without_a_usable_object_are_listed_and_the_rest_written(run_dec, tmp_path):
    src, masks = tmp_path / "src", tmp_path / "masks"
    for d in (src, masks):
        d.mkdir()
    for name in ("good", "empty", "unmasked"):
        shutil.copy(DATA / "photos/scenes/coffee.png", src / f"{name}.png")
    mask = np.zeros((H, W), np.uint8)
    Image.fromarray(mask).save(masks / "empty.png")
    mask[5:20, 5:30] = 1
    Image.fromarray(mask).save(masks / "good.png")
    dst = tmp_path / "dst"
    result = run_dec("warp", src, dst, "--zoom", "1.1", "--center", "object", "--masks", masks,
                     "--json", tmp_path / "s.json")
    assert result.code == 1 and "--skip-bad" in result.err
    bad = {b["path"]: b["reason"] for b in json.loads((tmp_path / "s.json").read_text())["bad"]}
    assert bad.keys() == {"empty.png", "unmasked.png"}
    assert "empty" in bad["empty.png"] and "no readable mask" in bad["unmasked.png"]
    assert "empty.png: " in result.err and "unmasked.png: " in result.err
    assert list(manifest(dst)) == ["good.z1.1.png"]
    assert not (dst / "empty.z1.1.png").exists() and not (dst / "unmasked.z1.1.png").exists()
    assert run_dec("warp", src, tmp_path / "dst2", "-q", "--zoom", "1.1", "--center", "object",
                   "--masks", masks, "--skip-bad").code == 0


def test_boxes_outside_degenerate_or_missing_are_listed_with_their_reason(run_dec, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("good", "outside", "degenerate", "missing"):
        shutil.copy(DATA / "photos/scenes/coffee.png", src / f"{name}.png")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"good.png": [10, 10, 50, 50], "outside.png": [100, 60, 140, 90],
                                 "degenerate.png": [40, 10, 40, 30]}))
    dst = tmp_path / "dst"
    result = run_dec("warp", src, dst, "--zoom", "1.1", "--center", "object", "--boxes", boxes, "--json", "-")
    assert result.code == 1
    bad = {b["path"]: b["reason"] for b in json.loads(result.out)["bad"]}
    assert bad == {"outside.png": "its box [100, 60, 140, 90] is not inside the 128x85 image",
                   "degenerate.png": "its box [40, 10, 40, 30] is degenerate (x1 <= x0 or y1 <= y0)",
                   "missing.png": "--boxes has no box for it"}
    assert list(manifest(dst)) == ["good.z1.1.png"] and (dst / "good.z1.1.png").is_file()


@pytest.mark.parametrize("content", [
    "not json at all",
    '[[1, 2, 3, 4]]',
    '{"coffee.png": [1, 2, 3]}',
    '{"coffee.png": {"x0": 1}}',
    '{"coffee.png": [1, 2, "3", 4]}',
    '{"images": [{"id": 1, "file_name": "coffee.png"}], "annotations": [{"image_id": 1}]}',
    '{"images": [{"id": 1, "file_name": "coffee.png"}], "annotations": [{"image_id": 2, "bbox": [0, 0, 1, 1]}]}',
    '{"images": {"id": 1}, "annotations": []}',
])
def test_a_malformed_boxes_file_is_one_line_exit_2(run_dec, coffee, tmp_path, content):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(content)
    dst = tmp_path / "dst"
    result = run_dec("warp", coffee, dst, "--zoom", "1.1", "--center", "object", "--boxes", boxes)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --boxes ") and "malformed" in lines[0]
    assert not dst.exists()


@pytest.mark.parametrize("args", [
    ["--center", "object", "--masks", "MASKS"],  # no --zoom
    ["--zoom", "1.1", "--center", "object"],  # nothing to find the objects with
    ["--zoom", "1.1", "--boxes", "BOXES"],  # boxes without --center object
    ["--zoom", "1.1", "--center", "object", "--boxes", "NOPE"],  # a missing boxes file
    ["--zoom", "1.1", "--center", "objects", "--masks", "MASKS"],  # a misspelt centre
])
def test_bad_object_options_are_one_line_exit_2(run_dec, coffee, tmp_path, args):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"scenes/coffee.png": list(BOX)}))
    paths = {"MASKS": str(tmp_path / "masks"), "BOXES": str(boxes), "NOPE": str(tmp_path / "nope.json")}
    result = run_dec("warp", coffee, tmp_path / "dst", *[paths.get(a, a) for a in args])
    assert result.code == 2, args
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(hint: " in lines[0]


# --------------------------------------------------------------------------- round trip


def test_unwarp_inverts_object_zooms_on_photographs(run_dec, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    boxes = {"cat.png": [20, 10, 90, 70], "astronaut.png": [60, 10, 120, 80],  # a face, off-centre
             "coffee.png": list(BOX), "camera.png": [30, 5, 80, 70]}
    for name in ("cat.png", "astronaut.png"):
        shutil.copy(EXAMPLES / name, src / name)
    shutil.copy(DATA / "photos/scenes/coffee.png", src / "coffee.png")
    shutil.copy(DATA / "photos/gray/camera.png", src / "camera.png")
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    warped, back = tmp_path / "warped", tmp_path / "back"
    assert run_dec("warp", src, warped, "-q", "--zoom", "0.8,1.25", "--center", "object",
                   "--boxes", tmp_path / "boxes.json").code == 0
    result = run_dec("unwarp", warped, back, "--json", "-")
    assert result.code == 0, result.err
    assert json.loads(result.out)["written"] == 8
    for name, rec in manifest(warped).items():
        a, b, warped_only = pixels(src / rec["src"]), pixels(back / name), pixels(warped / name)
        assert psnr_interior(a, b) >= 30.0, name
        assert psnr_interior(a, b) > psnr_interior(a, warped_only) + 3, name

