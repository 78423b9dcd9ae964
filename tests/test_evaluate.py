"""`dec evaluate` end to end: metrics against a direct computation, JSON schema, outputs, bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from dec_cli.backbones.checkpoint import load_model, save_model
from dec_cli.trees.data import eval_transform, load_image, scan_image_folder
from dec_cli.evaluation.evaluate import EvalSettings, image_warps
from dec_cli.canon.retrofit import retrofit
from dec_cli.warps.apply import apply_warp
from dec_cli.warps.zoom import zoom_warp
from helpers import assert_metric_close, plot_panels

CLASSES = ["circle", "square", "stripes"]
ZOOMS = (0.8, 1.0, 1.25)
IMG = "32"  # --img-size for every run: tiny and fast


def _picture(kind: str, variant: int, size: int = 48) -> Image.Image:
    """A small synthetic photo-like picture of one of three kinds."""
    rng = np.random.default_rng(variant)
    base = (rng.integers(0, 60, size=(size, size, 3)) + 40).astype(np.uint8)
    img = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(img)
    c = size // 2 + variant - 1
    r = size // 4 + variant
    color = (220, 40 + 30 * variant, 30)
    if kind == "circle":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=color)
    elif kind == "square":
        draw.rectangle([c - r, c - r, c + r, c + r], fill=color)
    else:
        for x in range(0, size, 6):
            draw.rectangle([x, 0, x + 2, size], fill=color)
    return img


def make_tree(root: Path, *, per_class: int = 3, odd_modes: bool = True, corrupt: bool = True) -> Path:
    """An ImageFolder tree with odd file modes and (optionally) one corrupt file."""
    for k, kind in enumerate(CLASSES):
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for v in range(per_class):
            img = _picture(kind, v)
            name = f"{kind}{v}"
            if odd_modes and v == 1 and k == 0:
                img.convert("L").save(folder / f"{name}.png")  # 8-bit gray
            elif odd_modes and v == 1 and k == 1:
                rgba = img.convert("RGBA")
                rgba.putalpha(200)
                rgba.save(folder / f"{name}.png")  # RGBA
            elif odd_modes and v == 1 and k == 2:
                arr = (np.asarray(img.convert("L")).astype(np.uint16) * 257)
                Image.fromarray(arr).save(folder / f"{name}.png")  # 16-bit gray
            elif odd_modes and v == 2 and k == 0:
                exif = Image.Exif()
                exif[0x0112] = 6  # rotated: must be transposed on load
                img.transpose(Image.Transpose.ROTATE_90).save(folder / f"{name}.jpg", exif=exif, quality=95)
            elif odd_modes and v == 2 and k == 1:
                img.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / f"{name}.png")
            elif odd_modes and v == 2 and k == 2:
                img.convert("CMYK").save(folder / f"{name}.jpg")
            else:
                img.save(folder / f"{name}.png")
    if corrupt:
        (root / CLASSES[1] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
        (root / CLASSES[1] / "notes.txt").write_text("not an image")
    return root


def make_zoom_tree(root: Path, *, sources: int = 2) -> Path:
    """A zoom sweep as `dec warp --zoom` writes it: name.z{z:g}.png plus manifest.jsonl."""
    rows = []
    for kind in CLASSES[:2]:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for v in range(sources):
            src = f"{kind}/{kind}{v}.png"
            x = torch.from_numpy(np.array(_picture(kind, v))).permute(2, 0, 1).contiguous()
            for z in ZOOMS:
                w = zoom_warp(z, center=(0.5, 0.5), radius=0.3, size=(48, 48), grid=16, rows=9)
                out = apply_warp(x, w)
                dst = f"{kind}/{kind}{v}.z{format(z, 'g')}.png"
                Image.fromarray(out.permute(1, 2, 0).numpy()).save(root / dst)
                rows.append({"src": src, "dst": dst, "seed": 0, "kind": "zoom", "zoom": z, "copy": None,
                             "scale_range": None, "grid": 16, "rows": 9,
                             "knots_x": w.knots_x[0].tolist(), "knots_y": w.knots_y[0].tolist(),
                             "center": [0.5, 0.5], "radius": 0.3})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The image trees, a plain timm weights file, and a DEC checkpoint with class names."""
    base = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    plain = load_model("test_resnet", num_classes=3)
    weights = base / "plain3.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(weights))
    dec = load_model("test_resnet", num_classes=3)
    retrofit(dec)
    ckpt = base / "dec3.safetensors"
    save_model(dec, ckpt, class_names=CLASSES)
    return {
        "tree": make_tree(base / "tree"),
        "zoom": make_zoom_tree(base / "zoom"),
        "weights": weights,
        "ckpt": ckpt,
        "base": base,
    }


def _json(run_dec, *args):
    result = run_dec("evaluate", *args, "--img-size", IMG, "--json", "-", "--quiet")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_metrics_match_a_direct_computation(run_dec, assets):
    doc = _json(run_dec, "test_resnet", "--weights", assets["weights"], "--data", assets["tree"],
                "--warps", "2", "--seed", "5", "--batch-size", "4")
    m = doc["models"][0]["metrics"]
    # By hand: the same model, transform and warps, one image at a time.
    model = load_model("test_resnet", weights=assets["weights"])
    tf = eval_transform(model, int(IMG))
    settings = EvalSettings(warps=2, seed=5)
    data = scan_image_folder(assets["tree"])
    hits, l2s, kls, same, whits = [], [], [], [], []
    with torch.no_grad():
        for s in data.samples:
            try:
                x = tf(load_image(s.path)).unsqueeze(0)
            except OSError:
                continue
            p = torch.softmax(model(x).double(), -1)[0]
            hits.append(int(p.argmax()) == s.label)
            xw = apply_warp(x.repeat(2, 1, 1, 1), image_warps(s.rel, 2, settings))
            for q in torch.softmax(model(xw).double(), -1):
                l2s.append(math.sqrt(float(((p - q) ** 2).sum())))
                kls.append(0.5 * float(((p - q) * (p.log() - q.log())).sum()))
                same.append(int(q.argmax()) == int(p.argmax()))
                whits.append(int(q.argmax()) == s.label)
    assert m["images"] == len(hits) == 9 and m["pairs"] == 18
    assert m["top1"] == pytest.approx(sum(hits) / len(hits), abs=1e-12)
    assert m["top5"] == 1.0  # three classes
    assert m["warped_top1"] == pytest.approx(sum(whits) / len(whits), abs=1e-12)
    assert m["consistency"] == pytest.approx(sum(same) / len(same), abs=1e-12)
    assert m["inv_error"] == pytest.approx(sum(l2s) / len(l2s), rel=1e-4, abs=1e-7)
    assert m["sym_kl"] == pytest.approx(sum(kls) / len(kls), rel=1e-3, abs=1e-9)
    assert m["inv_error"] > 0


def test_json_schema_and_unreadable_files(run_dec, assets):
    doc = _json(run_dec, "test_resnet", "--weights", assets["weights"], "--data", assets["tree"], "--warps", "1")
    assert doc["schema_version"] == 1
    assert set(doc) == {"schema_version", "tool", "data", "settings", "models", "unreadable", "fail_if"}
    assert doc["data"] == {"root": str(assets["tree"]), "labels": True, "classes": 3, "images": 10,
                           "evaluated": 9, "unreadable": 1, "zoom_sweep": False, "zooms": []}
    assert [b["path"] for b in doc["unreadable"]] == ["square/broken.png"] and doc["unreadable"][0]["reason"]
    assert set(doc["settings"]) == {"warps", "scale_range", "grid", "rows", "seed", "img_size", "limit", "amp",
                                   "tta_scales", "zoom"}
    assert doc["settings"]["tta_scales"] is None and doc["settings"]["zoom"] is None  # no on-the-fly sweep
    model = doc["models"][0]
    assert set(model) == {"name", "source", "model_name", "dec", "num_classes", "class_mapping", "input_size",
                          "metrics", "per_zoom", "per_strength", "timing", "weights_conversion", "dec_modules",
                          "weights_source", "residual_rel_by_dec"}
    assert model["weights_source"] == str(assets["weights"])
    assert model["weights_conversion"] is None  # timm's own keys: nothing renamed
    assert set(model["metrics"]) == {"images", "top1", "top5", "pairs", "warped_top1", "warped_top5", "inv_error",
                                     "sym_kl", "consistency", "zoom_top1_min", "zoom_consistency_min",
                                     "flip_rate", "residual_mean", "residual_max", "residual_rel",
                                     "canon_error"}
    assert model["metrics"]["flip_rate"] is None  # no zoom sweep
    assert model["input_size"] == [3, 32, 32] and model["class_mapping"] == "sorted-folders"
    assert sum(b["pairs"] for b in model["per_strength"]) == 9
    assert model["timing"]["latency_ms"] > 0


def test_metrics_are_reproducible_and_independent_of_batch_size(run_dec, assets):
    args = ("test_resnet", "--weights", assets["weights"], "--data", assets["tree"], "--warps", "2")
    a = _json(run_dec, *args, "--batch-size", "4")["models"][0]
    b = _json(run_dec, *args, "--batch-size", "4")["models"][0]
    c = _json(run_dec, *args, "--batch-size", "3")["models"][0]
    assert a["metrics"] == b["metrics"] and a["per_strength"] == b["per_strength"]
    for key, value in a["metrics"].items():
        assert_metric_close(c["metrics"][key], value, key)
    d = _json(run_dec, *args, "--seed", "1")["models"][0]
    assert d["metrics"]["inv_error"] != a["metrics"]["inv_error"]


def test_side_by_side_dec_checkpoint_reports_residuals(run_dec, assets, tmp_path):
    md, png = tmp_path / "r.md", tmp_path / "r.png"
    result = run_dec("evaluate", assets["ckpt"], "test_resnet", "--weights", assets["weights"],
                     "--data", assets["tree"], "--img-size", IMG, "--warps", "1", "--json", tmp_path / "r.json",
                     "--markdown", md, "--plot", png, "--fail-if", "residual_max>1e6")
    assert result.code == 0, result.err
    assert "dec3" in result.out and "DEC residual max" in result.out and "square/broken.png" in result.out
    doc = json.loads((tmp_path / "r.json").read_text())
    dec, plain = doc["models"]
    assert (dec["name"], dec["dec"], dec["class_mapping"]) == ("dec3", True, "checkpoint")
    assert dec["metrics"]["residual_mean"] is not None and dec["metrics"]["residual_max"] >= 0
    assert plain["dec"] is False and plain["metrics"]["residual_mean"] is None
    assert [r["model"] for r in doc["fail_if"]] == ["dec3"]  # residual rules apply to DEC models only
    text = md.read_text()
    assert "| metric | dec3 | test_resnet |" in text and "broken.png" in text
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 400
    assert plot_panels(png) == 2  # accuracy and consistency


def test_zoom_sweep_grouping(run_dec, assets, tmp_path):
    png = tmp_path / "zoom.png"
    doc = _json(run_dec, "test_resnet", "--weights", assets["weights"], "--data", assets["zoom"],
                "--class-map", _class_map(tmp_path), "--plot", png)
    assert doc["data"]["zoom_sweep"] is True and doc["data"]["zooms"] == list(ZOOMS)
    assert doc["settings"]["warps"] == 0  # zoom sweeps carry their own scale changes
    m = doc["models"][0]
    assert m["class_mapping"] == "class-map"
    # By hand: predict every file, group by source, compare with the zoom-1 prediction.
    model = load_model("test_resnet", weights=assets["weights"])
    tf = eval_transform(model, int(IMG))
    pred = {}
    with torch.no_grad():
        for p in sorted(assets["zoom"].rglob("*.png")):
            pred[p.relative_to(assets["zoom"]).as_posix()] = int(model(tf(load_image(p)).unsqueeze(0)).argmax())
    for row in m["per_zoom"]:
        z = format(row["zoom"], "g")
        names = [(k, v) for k in CLASSES[:2] for v in range(2)]
        files = [f"{k}/{k}{v}.z{z}.png" for k, v in names]
        refs = [f"{k}/{k}{v}.z1.png" for k, v in names]
        labels = [CLASSES.index(k) for k, _ in names]
        assert row["images"] == 4 and row["groups"] == 4
        assert row["top1"] == sum(pred[f] == y for f, y in zip(files, labels)) / 4
        assert row["consistency"] == sum(pred[f] == pred[r] for f, r in zip(files, refs)) / 4
    assert m["metrics"]["zoom_top1_min"] == min(r["top1"] for r in m["per_zoom"])
    assert m["metrics"]["zoom_consistency_min"] == min(r["consistency"] for r in m["per_zoom"])
    # Flip rate by hand: each source's predictions in zoom order, flips between neighbours.
    flips = [pred[f"{k}/{k}{v}.z{format(a, 'g')}.png"] != pred[f"{k}/{k}{v}.z{format(b, 'g')}.png"]
             for k in CLASSES[:2] for v in range(2) for a, b in zip(ZOOMS, ZOOMS[1:])]
    assert len(flips) == 8 and m["metrics"]["flip_rate"] == sum(flips) / 8
    assert png.is_file()


def _class_map(tmp_path: Path) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(CLASSES) + "\n")
    return path


def test_class_map_reorders_outputs(run_dec, assets, tmp_path):
    base = ("test_resnet", "--weights", assets["weights"], "--data", assets["tree"], "--warps", "0")
    plain = _json(run_dec, *base)["models"][0]["metrics"]["top1"]
    rev = tmp_path / "rev.json"
    rev.write_text(json.dumps(list(reversed(CLASSES))))
    doc = _json(run_dec, *base, "--class-map", rev)
    assert doc["models"][0]["class_mapping"] == "class-map"
    same = _json(run_dec, *base, "--class-map", _class_map(tmp_path))["models"][0]["metrics"]["top1"]
    assert same == plain
    bad = tmp_path / "bad.txt"
    bad.write_text("circle\nsquare\ntriangle\n")
    result = run_dec("evaluate", *base, "--class-map", bad)
    assert result.code == 2 and "unknown to test_resnet: stripes" in result.err


def test_wordnet_folders_map_to_imagenet_outputs(run_dec, tmp_path):
    root = tmp_path / "inet"
    for wnid, kind in [("n01440764", "circle"), ("n01443537", "square")]:
        (root / wnid).mkdir(parents=True)
        _picture(kind, 0).save(root / wnid / "a.png")
    doc = _json(run_dec, "test_resnet", "--random-init", "--data", root, "--warps", "0")
    assert doc["models"][0]["class_mapping"] == "wordnet" and doc["models"][0]["num_classes"] == 1000


def test_limit(run_dec, assets):
    doc = _json(run_dec, "test_resnet", "--weights", assets["weights"], "--data", assets["tree"], "--limit", "4",
                "--warps", "1")
    # sorted order: circle0, circle1, circle2, square/broken.png (unreadable)
    assert doc["data"]["images"] == 4 and doc["data"]["unreadable"] == 1
    assert doc["models"][0]["metrics"]["images"] == 3


def test_fail_if_exit_codes(run_dec, assets):
    base = ("evaluate", "test_resnet", "--weights", assets["weights"], "--data", assets["tree"], "--img-size", IMG,
            "--warps", "1", "--quiet")
    ok = run_dec(*base, "--fail-if", "top1<0", "--fail-if", "inv_error>10")
    assert ok.code == 0, ok.err
    bad = run_dec(*base, "--fail-if", "top1<1.01", "--fail-if", "consistency<0")
    assert bad.code == 1
    assert bad.err.startswith("error: 1 --fail-if rule(s) violated: test_resnet: top1 = ")
    assert len(bad.err.strip().splitlines()) == 1
    unknown = run_dec(*base, "--fail-if", "accuracy<0.5")
    assert unknown.code == 2 and "unknown metric 'accuracy'" in unknown.err
    needs_warps = run_dec(*base, "--warps", "0", "--fail-if", "consistency<0.9")
    assert needs_warps.code == 2 and "needs random warps" in needs_warps.err
    for rule in ("zoom_top1_min<0.5", "flip_rate>0.1"):
        needs_zoom = run_dec(*base, "--fail-if", rule)
        assert needs_zoom.code == 2 and "zoom-sweep" in needs_zoom.err
    needs_dec = run_dec(*base, "--fail-if", "residual_max>1")
    assert needs_dec.code == 2 and "no model has DEC modules" in needs_dec.err


@pytest.mark.parametrize("case", ["missing", "empty", "flat-no-images", "no-images", "class-count",
                                  "all-unreadable", "no-labels-no-images"])
def test_bad_data_is_a_one_line_usage_error(run_dec, assets, tmp_path, case):
    data = tmp_path / "data"
    if case != "missing":
        data.mkdir()
    if case == "flat-no-images":
        (data / "readme.txt").write_text("x")
    if case in ("no-images", "no-labels-no-images"):
        (data / "cls").mkdir()
        (data / "cls" / "readme.txt").write_text("x")
    if case == "class-count":
        data = assets["tree"]
    if case == "all-unreadable":
        (data / "cls").mkdir()
        (data / "cls" / "a.png").write_bytes(b"not a png")
    model = ("test_resnet", "--weights", assets["weights"]) if case == "all-unreadable" else ("test_resnet", "--random-init")
    if case == "all-unreadable":
        (tmp_path / "map.txt").write_text("cls\n")
        model += ("--class-map", tmp_path / "map.txt")
    if case == "no-labels-no-images":
        model += ("--no-labels",)
    result = run_dec("evaluate", *model, "--data", data, "--img-size", IMG, "--quiet")
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.err
    expected = {"missing": "does not exist", "empty": "is empty", "flat-no-images": "has no images",
                "no-images": "has class folders but no images", "no-labels-no-images": f"{data} has no images",
                "class-count": "3 class folders but test_resnet has 1000 outputs",
                "all-unreadable": "none of the 1 images"}
    assert expected[case] in lines[0]


def test_usage_errors(run_dec, assets, tmp_path):
    missing_data = run_dec("evaluate", "test_resnet")
    assert missing_data.code == 2 and "--data" in missing_data.err
    no_model = run_dec("evaluate", "--data", assets["tree"])
    assert no_model.code == 2 and "no MODEL" in no_model.err
    bad_plot = run_dec("evaluate", "test_resnet", "--random-init", "--data", assets["tree"], "--plot", tmp_path / "x.jpg")
    assert bad_plot.code == 2 and ".png" in bad_plot.err and ".svg" in bad_plot.err and ".pdf" in bad_plot.err
    bad_range = run_dec("evaluate", "test_resnet", "--data", assets["tree"], "--scale-range", "1.2,0.8")
    assert bad_range.code == 2
    too_many = run_dec("evaluate", assets["ckpt"], "--weights", assets["weights"], "--data", assets["tree"])
    assert too_many.code == 2 and "--weights" in too_many.err
    json_dir = run_dec("evaluate", "test_resnet", "--random-init", "--data", assets["tree"], "--json", tmp_path)
    assert json_dir.code == 2 and "is a directory" in json_dir.err


def test_no_arguments_runs_the_demo_inputs(run_dec, assets, monkeypatch, tmp_path):
    import dec_cli.jobs.demo

    monkeypatch.setattr(dec_cli.jobs.demo, "demo_inputs", lambda *a, **k: ([assets["ckpt"]], assets["zoom"]))
    result = run_dec("evaluate", "--img-size", IMG, "--json", tmp_path / "demo.json")
    assert result.code == 0, result.err
    doc = json.loads((tmp_path / "demo.json").read_text())
    assert doc["models"][0]["name"] == "dec3" and doc["data"]["zoom_sweep"] is True


def test_json_to_stdout_keeps_tables_on_stderr(run_dec, assets):
    result = run_dec("evaluate", "test_resnet", "--weights", assets["weights"], "--data", assets["tree"],
                     "--img-size", IMG, "--warps", "1", "--json", "-")
    assert result.code == 0, result.err
    assert json.loads(result.out)["schema_version"] == 1
    assert "Summary" in result.err and "broken.png" in result.err


def test_one_channel_models_get_gray_input():
    import timm

    model = timm.create_model("test_resnet", in_chans=1, num_classes=3)
    x = eval_transform(model, 24)(_picture("circle", 0))
    assert x.shape == (1, 24, 24)


def test_zoom_tree_masks_folder_is_not_a_class(tmp_path):
    root = make_zoom_tree(tmp_path / "z", sources=1)
    (root / "masks" / "circle").mkdir(parents=True)
    _picture("circle", 0).convert("L").save(root / "masks" / "circle" / "circle0.z1.png")
    data = scan_image_folder(root)
    assert data.classes == CLASSES[:2] and data.zoom_sweep
    assert {s.source for s in data.samples} == {"circle/circle0.png", "square/square0.png"}
    assert data.zooms() == list(ZOOMS)


def test_load_image_modes(tmp_path):
    gray16 = np.full((4, 6), 257 * 100, dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    img = load_image(tmp_path / "g16.png")
    assert img.mode == "RGB" and img.size == (6, 4) and img.getpixel((0, 0)) == (100, 100, 100)
    Image.new("RGBA", (5, 5), (10, 20, 30, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((2, 2)) == (255, 255, 255)  # transparent -> white
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (8, 4), (200, 0, 0)).save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (4, 8)  # EXIF orientation applied
    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    r, g, b = load_image(tmp_path / "cmyk.jpg").getpixel((1, 1))
    assert r > 200 and g < 60 and b < 60
    (tmp_path / "bad.png").write_bytes(b"\x00\x01")
    with pytest.raises(OSError):
        load_image(tmp_path / "bad.png")


def test_unreadable_names_with_control_characters_are_escaped(run_dec, assets, tmp_path):
    tree = shutil.copytree(assets["tree"], tmp_path / "tree")
    evil = "x\nerror: all good\x1b[2K.png"
    (tree / "square" / evil).write_bytes(b"not an image")
    result = run_dec("evaluate", "test_resnet", "--weights", assets["weights"], "--data", tree, "--warps", "0",
                     "--img-size", IMG)
    assert result.code == 0, result.err
    shown = result.out + result.err
    assert repr(f"square/{evil}") in shown and "\x1b" not in shown
    assert not [line for line in shown.splitlines() if line.startswith("error: ")]
