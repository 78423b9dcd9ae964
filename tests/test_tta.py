"""`dec evaluate --tta-scales`: test-time scale search as its own model row (NAME+tta)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dec_cli.backbones.checkpoint import load_model, save_model
from dec_cli.trees.data import eval_transform, load_image, scan_image_folder
from dec_cli.canon.retrofit import retrofit
from dec_cli.evaluation.tta import ScaleSearch, rescale
from test_evaluate import CLASSES, IMG, make_tree, make_zoom_tree

SCALES = (0.8, 1.0, 1.25)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """A small image tree, a zoom sweep, 3-class plain weights, a 3-class DEC checkpoint and a class map."""
    base = tmp_path_factory.mktemp("tta")
    torch.manual_seed(0)
    weights = base / "plain3.pt"
    torch.save(load_model("test_resnet", num_classes=3).state_dict(), weights)
    dec = retrofit(load_model("test_resnet", num_classes=3))
    save_model(dec, base / "dec3.safetensors", class_names=CLASSES)
    (base / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return {"tree": make_tree(base / "tree", per_class=2, odd_modes=False, corrupt=False),
            "zoom": make_zoom_tree(base / "zoom", sources=1), "weights": weights,
            "ckpt": base / "dec3.safetensors", "class_map": base / "classes.txt"}


def _doc(run_dec, *args):
    result = run_dec("evaluate", *args, "--img-size", IMG, "--json", "-", "--quiet")
    assert result.code == 0, result.err
    return json.loads(result.out)


# --------------------------------------------------------------------------- the rescaling


def test_rescale_crops_when_larger_and_pads_when_smaller():
    x = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    assert rescale(x, 1.0) is x
    big = rescale(x, 2.0)
    zoomed = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(big, zoomed[..., 4:12, 4:12])
    small = rescale(x, 0.5)
    inner = F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False, antialias=True)
    assert small.shape == x.shape
    torch.testing.assert_close(small[..., 2:6, 2:6], inner)
    # The frame repeats the border of the shrunk image: no black band, no mirrored content.
    torch.testing.assert_close(small[..., 0, 2:6], inner[..., 0, :])
    torch.testing.assert_close(small[..., 2:6, 7], inner[..., :, 3])
    assert float(small[..., 0, 0]) == float(inner[..., 0, 0])


def test_rescale_magnifies_a_disc_about_the_centre():
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    disc = (((yy - 19.5) ** 2 + (xx - 19.5) ** 2) < 6 ** 2).float().view(1, 1, 40, 40)
    for factor in (0.5, 1.5, 2.0):
        out = rescale(disc, factor)
        area = float((out > 0.5).sum())
        assert area == pytest.approx(float(disc.sum()) * factor ** 2, rel=0.2), factor
        cy = float((out[0, 0] * yy).sum() / out[0, 0].sum())
        assert cy == pytest.approx(19.5, abs=0.5)


# --------------------------------------------------------------------------- the search


def test_scale_search_keeps_the_most_confident_scale_by_hand(trees):
    torch.manual_seed(0)
    model = load_model("test_resnet", num_classes=3).eval()
    tf = eval_transform(model, int(IMG))
    x = torch.stack([tf(load_image(s.path)) for s in scan_image_folder(trees["tree"]).samples])
    with torch.no_grad():
        out = ScaleSearch(model, SCALES)(x)
        per_scale = [model(rescale(x, s)) for s in SCALES]
    for i in range(x.shape[0]):
        conf = [float(torch.softmax(p[i], -1).max()) for p in per_scale]
        best = max(range(len(SCALES)), key=lambda j: (conf[j], -j))
        torch.testing.assert_close(out[i], per_scale[best][i])
    chosen = {max(range(len(SCALES)), key=lambda j: float(torch.softmax(per_scale[j][i], -1).max()))
              for i in range(x.shape[0])}
    assert len(chosen) > 1, "every image picked the same scale: the check would not see a wrong choice"


def test_tta_row_next_to_plain_row_matches_a_direct_computation(run_dec, trees):
    weights = trees["weights"]
    doc = _doc(run_dec, "test_resnet", "--weights", weights, "--data", trees["tree"], "--warps", "0",
               "--tta-scales", ",".join(map(str, SCALES)), "--batch-size", "4")
    assert [m["name"] for m in doc["models"]] == ["test_resnet", "test_resnet+tta"]
    assert doc["settings"]["tta_scales"] == list(SCALES)
    plain, tta = doc["models"]
    assert set(tta) == set(plain) and set(tta["metrics"]) == set(plain["metrics"])
    assert tta["source"] == plain["source"] and tta["input_size"] == plain["input_size"]
    model = load_model("test_resnet", weights=weights)
    tf = eval_transform(model, int(IMG))
    hits = []
    with torch.no_grad():
        for s in scan_image_folder(trees["tree"]).samples:
            logits = torch.stack([model(rescale(tf(load_image(s.path)).unsqueeze(0), f))[0] for f in SCALES])
            conf = torch.softmax(logits, -1).amax(-1)
            hits.append(int(logits[int(conf.argmax())].argmax()) == s.label)
    assert tta["metrics"]["top1"] == pytest.approx(sum(hits) / len(hits), abs=1e-12)


@pytest.mark.parametrize("tree, extra", [("tree", ("--warps", "2")), ("zoom", ())])
def test_scale_one_alone_is_the_plain_model(run_dec, trees, tree, extra):
    doc = _doc(run_dec, trees["ckpt"], "test_resnet", "--weights", trees["weights"], "--data", trees[tree],
               "--class-map", trees["class_map"], "--tta-scales", "1", *extra)
    names = [m["name"] for m in doc["models"]]
    assert names == ["dec3", "dec3+tta", "test_resnet", "test_resnet+tta"]
    for plain, tta in (doc["models"][:2], doc["models"][2:]):
        assert tta["dec"] == plain["dec"]
        assert tta["per_zoom"] == plain["per_zoom"] and tta["per_strength"] == plain["per_strength"]
        for key, value in plain["metrics"].items():
            # Solver diagnostics belong to the plain row; the search row leaves them null.
            assert tta["metrics"][key] == (None if key.startswith("residual_") or key == "canon_error" else value), key
        assert tta["dec_modules"] == []
    assert doc["models"][0]["metrics"]["residual_mean"] is not None and doc["models"][0]["dec_modules"]
    assert doc["models"][0]["metrics"]["top1"] is not None


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("value, message", [
    ("0", "(0, 4]"), ("-1", "(0, 4]"), ("5", "(0, 4]"), ("nan", "(0, 4]"), ("x", "comma-separated"),
    ("1,,2", "comma-separated"), ("", "comma-separated"), ("1,1.0", "distinct"),
])
def test_bad_tta_scales_exit_2(run_dec, trees, value, message):
    result = run_dec("evaluate", "test_resnet", "--data", trees["tree"], "--tta-scales", value)
    assert result.code == 2, result.err
    lines = [x for x in result.err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.err
