"""`dec evaluate` without labels (flat photo folders, --no-labels) and the flip rate of zoom sweeps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dec_cli.backbones.checkpoint import load_model
from dec_cli.cli import main
from dec_cli.trees.data import NO_LABEL, eval_transform, load_image, scan_image_folder
from dec_cli.core.errors import UsageError
from dec_cli.evaluation.metrics import LABEL_METRICS, flip_rate
from helpers import assert_metric_close, lite0_weights, plot_panels
from test_evaluate import make_tree

PHOTOS = Path(__file__).parent / "data" / "photos"
IMG = "32"
ZOOMS = (0.8, 1.0, 1.25)
# Real photographs of four kinds of file: RGB, RGBA, gray PNG and a JPEG.
FLAT = ["animals/chelsea.png", "animals/horse.png", "gray/camera.png", "scenes/rocket.jpg"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A flat folder of real photos, and the zoom sweep `dec warp --zoom` makes of it."""
    base = tmp_path_factory.mktemp("labelfree")
    flat = base / "flat"
    flat.mkdir()
    for rel in FLAT:
        shutil.copy(PHOTOS / rel, flat / Path(rel).name)
    with pytest.raises(SystemExit) as done:
        main(["warp", str(flat), str(base / "zoom"), "--zoom", ",".join(map(str, ZOOMS)), "--quiet"])
    assert done.value.code == 0
    return {"flat": flat, "zoom": base / "zoom", "base": base}


def _evaluate(run_dec, *args):
    result = run_dec("evaluate", *args, "--img-size", IMG, "--json", "-", "--quiet")
    assert result.code == 0, result.err
    return json.loads(result.out)


def _assert_label_free(doc):
    assert doc["data"]["labels"] is False and doc["data"]["classes"] == 0
    for model in doc["models"]:
        assert model["class_mapping"] is None
        assert all(model["metrics"][key] is None for key in LABEL_METRICS)
        assert all(row["top1"] is None and row["top5"] is None for row in model["per_zoom"])
        assert all(row["top1"] is None for row in model["per_strength"])


def test_scan_modes(tmp_path):
    root = tmp_path / "photos"
    (root / "trip" / ".hidden").mkdir(parents=True)
    (root / "masks").mkdir()
    for rel in ["b.png", "a.jpg", "trip/c.png", "trip/.hidden/d.png", ".e.png", "masks/a.png"]:
        shutil.copy(PHOTOS / "animals" / "chelsea.png", root / rel)
    (root / "notes.txt").write_text("x")
    (root / "manifest.jsonl").write_text(json.dumps({"dst": "a.jpg", "kind": "random", "mask": "masks/a.png"}) + "\n")
    flat = scan_image_folder(root, labels=None)  # a subfolder: class folders win
    assert flat.labels and flat.classes == ["trip"]
    shutil.move(root / "trip", tmp_path / "trip")
    flat = scan_image_folder(root, labels=None)  # only masks/ (from the manifest) left: a flat folder
    assert not flat.labels and flat.classes == [] and [s.rel for s in flat.samples] == ["a.jpg", "b.png"]
    assert {s.label for s in flat.samples} == {NO_LABEL}
    shutil.move(tmp_path / "trip", root / "trip")
    every = scan_image_folder(root, labels=False)  # nested too, hidden and masks/ left out
    assert not every.labels and [s.rel for s in every.samples] == ["a.jpg", "b.png", "trip/c.png"]
    assert every.limit(1).labels is False
    shutil.rmtree(root / "trip")
    with pytest.raises(UsageError, match="has no class folders"):  # dec finetune needs classes
        scan_image_folder(root, labels=True)


def test_flat_folder_of_photos_is_label_free(run_dec, photos, tmp_path):
    md = tmp_path / "r.md"
    result = run_dec("evaluate", "test_resnet", "test_vit", "--random-init", "--data", photos["flat"], "--img-size", IMG,
                     "--warps", "2", "--json", tmp_path / "r.json", "--markdown", md, "--plot", tmp_path / "r.png")
    assert result.code == 0, result.err
    doc = json.loads((tmp_path / "r.json").read_text())
    _assert_label_free(doc)
    assert doc["data"]["images"] == doc["data"]["evaluated"] == 4 and doc["data"]["zoom_sweep"] is False
    for model in doc["models"]:
        m = model["metrics"]
        assert m["images"] == 4 and m["pairs"] == 8
        assert 0 <= m["consistency"] <= 1 and m["inv_error"] >= 0 and m["sym_kl"] >= 0
        assert m["flip_rate"] is None and m["zoom_consistency_min"] is None
        assert sum(row["pairs"] for row in model["per_strength"]) == 8
    assert "no labels" in result.out and "top-1" not in result.out and "consistency" in result.out
    text = md.read_text()
    assert "no labels" in text and "| top-1 |" not in text and "| consistency |" in text
    assert "test_vit consist." in text and "top-1 / consist." not in text
    assert plot_panels(tmp_path / "r.png") == 1  # consistency only: there is no accuracy to draw


def test_no_labels_on_a_labelled_tree(run_dec, tmp_path):
    tree = make_tree(tmp_path / "tree", corrupt=False)
    torch.manual_seed(0)
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in load_model("test_resnet", num_classes=3).state_dict().items()},
              str(weights))
    args = ("test_resnet", "--weights", weights, "--data", tree, "--warps", "2", "--seed", "3")
    labelled = _evaluate(run_dec, *args)
    free = _evaluate(run_dec, *args, "--no-labels")
    assert labelled["data"]["labels"] is True and labelled["models"][0]["metrics"]["top1"] is not None
    _assert_label_free(free)
    a, b = labelled["models"][0], free["models"][0]
    for key in ("images", "pairs", "consistency", "inv_error", "sym_kl"):
        assert_metric_close(b["metrics"][key], a["metrics"][key], key)
    assert [r["consistency"] for r in a["per_strength"]] == [r["consistency"] for r in b["per_strength"]]
    # No class-count check without labels: a 1000-class model on a 3-class tree runs.
    assert run_dec("evaluate", "test_resnet", "--random-init", "--data", tree, "--img-size", IMG, "--quiet").code == 2
    assert _evaluate(run_dec, "test_resnet", "--random-init", "--data", tree, "--warps", "1", "--no-labels")["data"]["images"] == 9


# A real ImageNet model: its predictions on these photos do not depend on timm's random init,
# which changes between timm versions (a random test_vit of one version never flipped here).
REAL = ("tf_efficientnet_lite0", "--weights", lite0_weights())


def _predictions(root: Path) -> dict[str, int]:
    """The real EfficientNet-Lite0 on every image of a zoom tree, by relative path."""
    model = load_model("tf_efficientnet_lite0", weights=lite0_weights()).eval()
    tf = eval_transform(model, int(IMG))
    with torch.no_grad():
        return {p.name: int(model(tf(load_image(p)).unsqueeze(0)).argmax())
                for p in sorted(root.iterdir()) if p.suffix in (".png", ".jpg")}


def test_label_free_zoom_sweep_of_flat_photos(run_dec, photos, tmp_path):
    doc = _evaluate(run_dec, *REAL, "--data", photos["zoom"], "--markdown", tmp_path / "z.md")
    _assert_label_free(doc)
    assert doc["data"]["zoom_sweep"] is True and doc["data"]["zooms"] == list(ZOOMS)
    m = doc["models"][0]
    pred = _predictions(photos["zoom"])
    stems = [Path(rel).stem for rel in FLAT]
    ext = {Path(rel).stem: Path(rel).suffix for rel in FLAT}
    name = {(s, z): f"{s}.z{format(z, 'g')}{ext[s]}" for s in stems for z in ZOOMS}
    for row in m["per_zoom"]:
        agree = [pred[name[s, row["zoom"]]] == pred[name[s, 1.0]] for s in stems]
        assert row["images"] == row["groups"] == 4 and row["consistency"] == sum(agree) / 4
    flips = [pred[name[s, a]] != pred[name[s, b]] for s in stems for a, b in zip(ZOOMS, ZOOMS[1:])]
    assert m["metrics"]["flip_rate"] == sum(flips) / len(flips)
    assert 0 < m["metrics"]["flip_rate"] < 1  # the sweep really moves this model's predictions
    assert "| flip rate |" in (tmp_path / "z.md").read_text()


def test_fail_if_on_a_label_free_sweep(run_dec, photos):
    base = ("evaluate", *REAL, "--data", photos["zoom"], "--img-size", IMG, "--quiet")
    assert run_dec(*base, "--fail-if", "flip_rate>0.99", "--fail-if", "zoom_consistency_min<0").code == 0
    flipped = run_dec(*base, "--fail-if", "flip_rate>0.01")
    assert flipped.code == 1 and len(flipped.err.strip().splitlines()) == 1
    assert flipped.err.startswith("error: 1 --fail-if rule(s) violated: tf_efficientnet_lite0: flip_rate = ")
    for rule in ("top1<0.5", "zoom_top1_min<0.5", "warped_top5<0.9"):
        needs_labels = run_dec(*base, "--fail-if", rule)
        lines = needs_labels.err.strip().splitlines()
        assert needs_labels.code == 2 and len(lines) == 1 and "needs labels" in lines[0], needs_labels.err


def test_flip_rate_counts_adjacent_pairs_per_source():
    # Two sources; the second lost its zoom-1 output, so its neighbours 0.8 and 1.25 become adjacent.
    zooms = [1.25, 0.8, 1.0, 0.8, 1.25, None]
    sources = ["a", "a", "a", "b", "b", None]
    rec = {"index": np.array([0, 1, 2, 3, 4, 5]), "pred": np.array([7, 7, 3, 1, 1, 9])}
    assert flip_rate(rec, zooms, sources) == 2 / 3  # a: 7,3,7 -> 2 flips in 2 pairs; b: 1,1 -> 0 in 1
    assert flip_rate({"index": np.array([5]), "pred": np.array([1])}, zooms, sources) is None
