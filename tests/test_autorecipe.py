"""Any timm backbone: an automatic recipe from the model itself, identity at init, clear refusals."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from dec_cli import load_model
from dec_cli.backbones.backbone import create_backbone
from dec_cli.core.errors import UsageError
from dec_cli.canon.retrofit import dec_modules, retrofit

SIZE = 64
# Architectures outside the six recipe families (vit, deit, beit, swin, resnet, convnext), with the
# insertion point, layout and prefix tokens the automatic recipe must find at 64 x 64.
ARCHS = {
    "mobilenetv2_050": ("blocks.2", "nchw", 0),  # EfficientNet builder; 16 channels at 16x16: needs a 2nd probe
    "mobilenetv3_small_050": ("blocks.1", "nchw", 0),
    "regnetx_002": ("s2", "nchw", 0),
    "ghostnet_050": ("blocks.3", "nchw", 0),
    "dla46_c": ("level3", "nchw", 0),
    "test_nfnet": ("stages.1", "nchw", 0),
    "edgenext_xx_small": ("stages.1", "nchw", 0),
    "efficientformerv2_s0": ("stages.1", "nchw", 0),
    "pvt_v2_b0": ("stages.1", "nchw", 0),
    "mobilevit_xxs": ("stages.2", "nchw", 0),  # hybrid: convolutions and transformer blocks
    "maxvit_rmlp_pico_rw_256": ("stages.1", "nchw", 0),  # hybrid (MaxViT; timm 1.0.21 has no test_maxvit)
    "test_mambaout": ("stages.1", "nhwc", 0),  # channel-last stages
    "levit_128s": ("stages.1", "tokens", 0),  # hybrid: tokens without a cls token
    "eva02_tiny_patch14_224": ("blocks.1", "tokens", 1),  # other ViT variant with a cls token
    "xcit_nano_12_p16_224": ("blocks.1", "tokens", 0),  # its cls token joins after these blocks
}


def build(name: str):
    torch.manual_seed(0)
    return create_backbone(name, num_classes=7, img_size=SIZE)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_identity_at_init_on_any_timm_backbone(name):
    plain = build(name)
    dec = retrofit(copy.deepcopy(plain), img_size=SIZE)
    recipe = dec.dec_info["recipe"]
    assert recipe["name"] == "auto" and len(dec_modules(dec)) == 1
    point = recipe["points"][0]
    assert (point["path"], point["layout"], point["prefix_tokens"]) == ARCHS[name]
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        at_init = (plain(x) - dec(x)).abs().max().item()
        assert at_init <= 1e-4
        # the DEC sits in the forward path: a non-identity DEC changes the logits (small: random backbones)
        for p in dec_modules(dec)[0].parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.5)
        assert (plain(x) - dec(x)).abs().max().item() > max(10 * at_init, 1e-7)


def test_cli_retrofit_prints_the_automatic_choice_and_reloads(run_dec, tmp_path):
    out = tmp_path / "xcit.safetensors"
    r = run_dec("retrofit", "xcit_nano_12_p16_224", "--random-init", "--img-size", SIZE, "--num-classes", "5",
                "-o", out, "--json", tmp_path / "r.json")
    assert r.code == 0, r.err
    assert "recipe auto: derived from xcit_nano_12_p16_224" in r.out and "blocks.1" in r.out
    assert "tokens features" in r.out
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["recipe"] == "auto" and summary["points"][0]["prefix_tokens"] == 0
    # the checkpoint keeps the recipe (prefix tokens included): it rebuilds and matches the plain backbone,
    # which the same seed recreates
    model = load_model(out)
    torch.manual_seed(0)
    plain = create_backbone("xcit_nano_12_p16_224", num_classes=5, img_size=SIZE)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model(x) - plain(x)).abs().max().item() <= 1e-4


def test_recipe_auto_on_a_covered_family_and_given_points():
    model = retrofit(create_backbone("test_resnet", num_classes=3), recipe="auto", img_size=48)
    assert model.dec_info["recipe"]["name"] == "auto" and model.dec_info["recipe"]["at"] == ["layer2"]
    model = retrofit(build("test_mambaout"), at="stages.1,stages.2", img_size=SIZE)
    assert [p["layout"] for p in model.dec_info["recipe"]["points"]] == ["nhwc", "nhwc"]


def test_models_that_cannot_be_retrofitted_automatically(run_dec, tmp_path):
    out = tmp_path / "hrnet.safetensors"
    r = run_dec("retrofit", "hrnet_w18_small", "--random-init", "--img-size", SIZE, "-o", out)
    assert r.code == 2 and r.err.count("\n") == 1 and r.err.startswith("error:")
    assert "no stage in its feature_info takes one feature tensor" in r.err and "gets no single tensor" in r.err
    assert "write a recipe" in r.err and "--recipe FILE" in r.err
    assert not out.exists()
    model = build("test_efficientnet")
    del model.feature_info
    with pytest.raises(UsageError, match="has no feature_info") as err:
        retrofit(model, img_size=SIZE)
    assert "layout tokens|nchw|nhwc" in err.value.hint
    with pytest.raises(UsageError, match=r"classifier cannot take a DEC automatically: it gets a 2-D tensor"):
        retrofit(build("test_efficientnet"), at="classifier", img_size=SIZE)


def test_models_lists_families_and_the_automatic_recipe(run_dec):
    r = run_dec("models", "--json", "-")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert {"vit", "deit", "beit", "swin", "resnet", "convnext"} <= {d["name"] for d in doc["recipes"]}
    assert doc["auto"]["name"] == "auto" and "feature_info" in doc["auto"]["description"]
    r = run_dec("models")
    assert r.code == 0 and "automatic recipe ('auto')" in r.out
