"""Retrofit: identity at init for every family, recipes, insertion points, invariance, parameter groups."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from dec_cli.backbones.backbone import create_backbone
from dec_cli.core.errors import UsageError
from dec_cli.warps.randomwarp import random_warp
from dec_cli.canon.retrofit import (DECBlock, backbone_parameters, builtin_recipes, dec_modules, dec_parameters,
                              find_recipe, retrofit)
from dec_cli.warps.apply import apply_warp

# One tiny model per family: (timm name, kwargs, input size (H, W)).
FAMILIES = {
    "vit": ("test_vit", {"img_size": 32, "patch_size": 4}, (32, 32)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224",
                       {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}, (32, 32)),
    "beit": ("beit_base_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32,
                                       "num_heads": 2}, (32, 32)),
    "swin": ("swin_tiny_patch4_window7_224", {"img_size": 56, "depths": (1, 1), "num_heads": (2, 4),
                                              "embed_dim": 16}, (56, 56)),
    "resnet": ("test_resnet", {}, (48, 48)),
    "resnet18": ("resnet18", {}, (40, 40)),
    "convnext": ("test_convnext", {}, (48, 48)),
}


def build(name: str, kwargs: dict, num_classes: int = 7):
    torch.manual_seed(0)
    return create_backbone(name, num_classes=num_classes, model_kwargs=kwargs)


def smooth_images(b: int, h: int, w: int) -> torch.Tensor:
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None, :]
    return torch.stack([torch.stack([torch.sin(2.5 * x + 1.7 * y + c + i) for c in range(3)]) for i in range(b)])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_identity_at_init(family):
    name, kwargs, size = FAMILIES[family]
    plain = build(name, kwargs)
    dec = retrofit(copy.deepcopy(plain), img_size=size[0])
    assert dec.dec_info["dec"] and len(dec_modules(dec)) == 1
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (plain(x) - dec(x)).abs().max().item()
    assert diff <= 1e-4
    point = dec.dec_info["recipe"]["points"][0]
    if family == "deit_distilled":
        assert point["prefix_tokens"] == 2
    if family == "swin":
        assert point["layout"] == "nhwc"


def test_vit_any_input_size_with_registers():
    """Dynamic image size, non-square input, 4 register tokens: grid from the actual token count."""
    kwargs = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2, "reg_tokens": 4,
              "dynamic_img_size": True}
    plain = build("vit_small_patch16_224", kwargs)
    dec = retrofit(copy.deepcopy(plain))
    assert dec_modules(dec)[0] is not None and dec.dec_info["recipe"]["points"][0]["prefix_tokens"] == 5
    twin = copy.deepcopy(dec)  # the image-size hook must follow the copy's own wrappers
    for size in ((32, 32), (24, 48), (40, 16)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            assert (plain(x) - dec(x)).abs().max() <= 1e-4
            assert (plain(x) - twin(x)).abs().max() <= 1e-4
    # a forced warp on a non-square grid runs and changes the output
    dec_modules(dec)[0].pin(torch.tensor([[0.8, -0.4, 0.1, -0.5]]))
    with torch.no_grad():
        assert (plain(x) - dec(x)).abs().max() > 1e-3


def test_invariance_through_a_real_backbone():
    """DEC forced to the warp w in front of test_resnet's stem: the retrofitted model sees S(x) as x."""
    plain = build("test_resnet", {})
    dec = retrofit(copy.deepcopy(plain), at="conv1", recipe="resnet")
    assert isinstance(dec.get_submodule("conv1"), DECBlock)
    x = smooth_images(2, 64, 64)
    w = random_warp(2, grid=4, scale_range=(0.7, 1.43), generator=torch.Generator().manual_seed(4))
    warped = apply_warp(x, w)
    d = dec_modules(dec)[0]
    with torch.no_grad():
        base = plain(x)
        before = dec(warped)  # identity DEC: same as the backbone on the warped image
        d.pin(torch.log(torch.diff(w.knots_x, dim=-1)), torch.log(torch.diff(w.knots_y, dim=-1)))
        after = dec(warped)
    change = (before - base).abs().max()
    error = (after - base).abs().max()
    assert torch.allclose(before, plain(warped), atol=1e-5)
    assert change > 5 * error  # canonicalized: close to the un-warped logits, within interpolation error
    assert (after - before).abs().max() > 1e-3  # the forced warp changes outputs


def test_equivariant_mode_identity_and_modes():
    name, kwargs, size = FAMILIES["convnext"]
    plain = build(name, kwargs)
    dec = retrofit(copy.deepcopy(plain), mode="equivariant", at="stages.1,stages.2", grid=3, rows=2, iters=2)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert (plain(x) - dec(x)).abs().max() <= 1e-4
    mods = dec_modules(dec)
    assert len(mods) == 2 and mods[0].settings.rows == 2 and mods[0].settings.iters == 2
    assert dec.dec_info["recipe"]["mode"] == "equivariant"


def test_parameter_groups_partition_and_gradients_reach_dec():
    name, kwargs, size = FAMILIES["vit"]
    model = retrofit(build(name, kwargs))
    dp, bp = dec_parameters(model), backbone_parameters(model)
    assert {id(p) for p in dp}.isdisjoint({id(p) for p in bp})
    assert len(dp) + len(bp) == len(list(model.parameters()))
    model.train()
    out = model(torch.randn(2, 3, *size))
    out.logsumexp(-1).sum().backward()
    last = dec_modules(model)[0].out.weight
    assert last.grad is not None and last.grad.abs().sum() > 0  # zero-init layer still learns


def test_recipes_match_families():
    names = {r.name for r in builtin_recipes()}
    assert {"vit", "deit", "beit", "swin", "resnet", "convnext"} <= names
    assert find_recipe("vit_small_patch16_224.augreg_in21k").name == "vit"
    assert find_recipe("deit_tiny_distilled_patch16_224").name == "deit"
    assert find_recipe("swinv2_tiny_window8_256").name == "swin"
    assert find_recipe("resnet50").name == "resnet"
    assert find_recipe("resnetv2_50") is None  # a different architecture: no silent mismatch
    assert find_recipe("efficientnet_b0") is None


def test_user_recipe_file(tmp_path: Path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\npatterns: [test_convnext]\nlayout: nchw\nat: [stages.2]\n"
                      "dec: {grid: 3, iters: 2}\n")
    model = retrofit(build(*FAMILIES["convnext"][:2]), recipe=str(recipe))
    assert model.dec_info["recipe"]["name"] == "mine" and model.dec_info["recipe"]["at"] == ["stages.2"]
    assert dec_modules(model)[0].settings.grid == 3

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\npatterns: [x]\nlayout: nchw\n")
    with pytest.raises(UsageError, match="lacks at"):
        retrofit(build(*FAMILIES["convnext"][:2]), recipe=str(bad))
    bad.write_text("name: bad\npatterns: [x]\nlayout: diagonal\nat: [stages.1]\n")
    with pytest.raises(UsageError, match="layout"):
        retrofit(build(*FAMILIES["convnext"][:2]), recipe=str(bad))
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        retrofit(build(*FAMILIES["convnext"][:2]), recipe=str(bad))


def test_bad_insertion_points_and_double_retrofit():
    model = build(*FAMILIES["convnext"][:2])
    with pytest.raises(UsageError, match="no module 'stages.9'") as err:
        retrofit(model, at="stages.9")
    assert "stages.0" in err.value.hint  # lists timm's feature_info module names
    with pytest.raises(UsageError, match="4-D input"):
        retrofit(model, at="stages.1", recipe="vit")  # recipe layout disagrees with the features
    with pytest.raises(UsageError, match="mode"):
        retrofit(model, mode="sideways")
    retrofit(model)
    with pytest.raises(UsageError, match="already has DEC"):
        retrofit(model)
    assert retrofit(build("test_efficientnet", {})).dec_info["recipe"]["name"] == "auto"  # tests/test_autorecipe.py
