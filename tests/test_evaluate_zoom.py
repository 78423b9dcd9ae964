"""`dec evaluate --zoom`: the zoom sweep applied on the fly equals evaluating the tree `dec warp --zoom` writes.

Also the object-centred sweep from boxes (JSON or a folder of Pascal VOC XML files)
and masks, and the usage errors of the options.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dec_cli.trees.data import data_config, eval_transform, load_image, scan_image_folder
from dec_cli.evaluation.evalzoom import ZoomOptions, crop_window, plan_sweep
from dec_cli.backbones.checkpoint import load_model
from dec_cli.jobs.folderwarp import run_warp
from dec_cli.trees.warpplan import WarpSettings

from test_evaluate import CLASSES, make_tree  # noqa: E402  (tests/ is on sys.path under pytest)

ZOOMS = "0.7,1,1.4"
EVAL = ["--random-init", "--img-size", "32", "--warps", "0", "--device", "cpu", "--quiet", "--batch-size", "4"]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """A plain labelled tree, the tree `dec warp --zoom` makes of it, and a class map."""
    base = tmp_path_factory.mktemp("evalzoom")
    plain = make_tree(base / "plain", per_class=2, odd_modes=False, corrupt=False)
    classes = base / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    tree = base / "tree"
    run_warp(plain, tree, WarpSettings(zooms=(0.7, 1.0, 1.4), center=(0.45, 0.55)))
    return base, plain, tree, classes


def _report(run_dec, *args) -> dict:
    result = run_dec("evaluate", *args, "--json", "-")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_model_inputs_equal_the_trees_within_one_resampling(trees):
    base, plain, tree, _ = trees
    model = load_model("test_resnet", num_classes=3)
    cfg, transform = data_config(model, 32), eval_transform(model, 32)
    data, sweep = plan_sweep(scan_image_folder(plain), ZoomOptions((0.7, 1.0, 1.4), (0.45, 0.55)))
    assert sorted(s.rel for s in data.samples) == sorted(s.rel for s in scan_image_folder(tree).samples)
    for s in data.samples:
        fly = sweep.apply(transform(load_image(s.path))[None], [s], cfg)[0]
        ref = transform(load_image(tree / s.rel))
        diff = (fly - ref).abs()
        if s.zoom == 1:
            assert float(diff.max()) < 1e-5  # the identity zoom resamples nothing (float32 rounding)
        else:  # inputs span [-1, 1]: the two resampling orders (and the PNG's rounding) differ at edges,
            # most on 4-pixel stripes magnified 1.4 times (0.05 on average, measured)
            assert float(diff.mean()) < 0.06 and float(diff[:, 2:-2, 2:-2].max()) < 0.4, (s.rel, float(diff.mean()))


def test_per_zoom_metrics_and_flip_rate_equal_the_trees(run_dec, trees):
    base, plain, tree, classes = trees
    args = ["test_vit", "--class-map", classes, *EVAL]
    ref = _report(run_dec, *args, "--data", tree)
    fly = _report(run_dec, *args, "--data", plain, "--zoom", ZOOMS, "--center", "0.45,0.55")
    a, b = ref["models"][0], fly["models"][0]
    assert [r["zoom"] for r in b["per_zoom"]] == [0.7, 1.0, 1.4]
    # The random test_vit sits near ties: the tree's PNG rounding and the on-the-fly float pixels may put
    # one of a zoom's 6 images on the other side of one (seen with the lowest dependency versions).
    one_image = 1 / 6 + 1e-9
    for row_a, row_b in zip(a["per_zoom"], b["per_zoom"]):
        assert {k: row_b[k] for k in ("zoom", "images", "groups")} == {k: row_a[k] for k in ("zoom", "images", "groups")}
        for key in ("top1", "top5", "consistency"):
            assert abs(row_b[key] - row_a[key]) <= one_image, (row_a["zoom"], key)
    for key in ("top1", "zoom_top1_min", "zoom_consistency_min", "flip_rate"):
        assert abs(b["metrics"][key] - a["metrics"][key]) <= one_image, key
    assert fly["data"]["zoom_sweep"] and fly["data"]["images"] == ref["data"]["images"] == 18
    assert fly["settings"]["zoom"] == {"zooms": [0.7, 1.0, 1.4], "center": [0.45, 0.55], "radius": None,
                                       "boxes": None, "masks": None}


def _voc(folder: Path, name: str, boxes: list[tuple[int, int, int, int]]) -> None:
    objects = "".join(f"<object><name>thing</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
                      f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>" for x0, y0, x1, y1 in boxes)
    (folder / f"{name}.xml").write_text(f"<annotation><filename>{name}.png</filename>{objects}</annotation>")


def test_object_sweep_from_voc_json_and_masks_agree(run_dec, trees, tmp_path):
    base, plain, tree, classes = trees
    rels = [s.rel for s in scan_image_folder(plain).samples]
    box = (14, 10, 34, 30)  # 48 x 48 pictures
    voc, masks = tmp_path / "voc", tmp_path / "masks"
    voc.mkdir()
    for rel in rels:  # flat, like ImageNet's validation boxes; a smaller second object is ignored
        _voc(voc, Path(rel).stem, [(2, 2, 6, 6), box])
        (masks / rel).parent.mkdir(parents=True, exist_ok=True)
        m = np.zeros((48, 48), np.uint8)
        m[box[1]:box[3], box[0]:box[2]] = 1
        Image.fromarray(m).save(masks / rel)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({rel: list(box) for rel in rels}))
    args = ["test_vit", "--class-map", classes, *EVAL, "--data", plain, "--zoom", ZOOMS, "--center", "object"]
    by_voc = _report(run_dec, *args, "--boxes", voc)["models"][0]
    by_json = _report(run_dec, *args, "--boxes", boxes)["models"][0]
    by_mask = _report(run_dec, *args, "--masks", masks)["models"][0]
    assert by_voc["per_zoom"] == by_json["per_zoom"] == by_mask["per_zoom"]
    # dec warp reads the same VOC folder into the same discs as the JSON boxes
    for src, name in ((voc, "w-voc"), (boxes, "w-json")):
        assert run_dec("warp", plain, tmp_path / name, "-q", "--zoom", ZOOMS, "--center", "object",
                       "--boxes", src).code == 0
    assert (tmp_path / "w-voc/manifest.jsonl").read_text() == (tmp_path / "w-json/manifest.jsonl").read_text()


def test_images_without_an_object_are_listed_and_the_rest_evaluated(run_dec, trees, tmp_path):
    base, plain, tree, classes = trees
    rels = [s.rel for s in scan_image_folder(plain).samples]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({rels[0]: [0, 20, 1, 30], **{rel: [10, 10, 30, 30] for rel in rels[2:]}}))
    report = _report(run_dec, "test_vit", "--class-map", classes, *EVAL, "--data", plain, "--zoom", ZOOMS,
                     "--center", "object", "--boxes", boxes)
    reasons = {b["path"]: b["reason"] for b in report["unreadable"]}
    assert "too close to the border" in reasons[rels[0]] and reasons[rels[1]] == "--boxes has no box for it"
    assert report["data"]["evaluated"] == 3 * (len(rels) - 2)


def test_crop_window_follows_timms_centre_crop():
    cfg = {"input_size": (3, 32, 32), "crop_pct": 0.95, "crop_mode": "center"}
    # shorter side to floor(32 / 0.95) = 33, then torchvision's centre crop (offset round(0.5) = 0)
    assert crop_window((48, 48), cfg) == pytest.approx((0, 0, 32 / 33, 32 / 33))
    assert crop_window((96, 48), cfg) == pytest.approx((17 / 66, 0, 49 / 66, 32 / 33))  # wide: the sides are cut
    assert crop_window((48, 48), {**cfg, "crop_pct": 1.0}) == (0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("args,needle", [
    (["--zoom", "0.01,1"], "--zoom factors must lie in [0.05, 20]"),
    (["--zoom", "1.2", "--center", "object"], "--center object needs the objects"),
    (["--center", "0.5,0.5"], "apply to --zoom sweeps only"),
    (["--zoom", "1.2", "--boxes", "b.json"], "apply to --center object only"),
    (["--zoom", "1.8", "--radius", "0.25", "--center", "0.1,0.5"], "beside the disc"),
    (["--zoom", "1.2", "--center", "object", "--boxes", "missing-dir/"], "cannot read --boxes"),
])
def test_bad_zoom_options_are_one_line_usage_errors(run_dec, trees, args, needle):
    base, plain, tree, classes = trees
    result = run_dec("evaluate", "test_resnet", "--class-map", classes, *EVAL, "--data", plain, *args)
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.err


def test_zoom_on_a_zoom_tree_and_malformed_voc_are_refused(run_dec, trees, tmp_path):
    base, plain, tree, classes = trees
    result = run_dec("evaluate", "test_resnet", "--class-map", classes, *EVAL, "--data", tree, "--zoom", "1.2")
    assert result.code == 2 and "is a 'dec warp --zoom' tree" in result.err
    voc = tmp_path / "voc"
    voc.mkdir()
    (voc / "a.xml").write_text("<annotation><object><bndbox><xmin>1</xmin></bndbox></object></annotation>")
    result = run_dec("evaluate", "test_resnet", "--class-map", classes, *EVAL, "--data", plain, "--zoom", "1.2",
                     "--center", "object", "--boxes", voc)
    assert result.code == 2 and "a.xml is malformed" in result.err
