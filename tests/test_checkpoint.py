"""Checkpoints and weight files: exact round trips, `dec retrofit/info/models`, refusal of unsafe or broken files."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dec_cli import load_model, save_model
from dec_cli.backbones.backbone import create_backbone
from dec_cli.backbones.checkpoint import read_metadata
from dec_cli.core.errors import DecError, UsageError
from dec_cli.canon.retrofit import dec_modules, retrofit

KW = {"img_size": 32, "patch_size": 8}  # test_vit with a 4x4 token grid
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny_vit(num_classes: int = 5):
    torch.manual_seed(0)
    return create_backbone("test_vit", num_classes=num_classes, model_kwargs=KW)


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory) -> Path:
    """A plain state dict saved the usual PyTorch way (zip pickle of tensors only)."""
    path = tmp_path_factory.mktemp("w") / "vit.pth"
    torch.save(tiny_vit().state_dict(), path)
    return path


def perturb_dec(model) -> None:
    """Give the DEC heads non-zero weights so the round trip covers a non-identity warp."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in dec_modules(model):
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def test_save_load_reproduces_logits_exactly(tmp_path):
    model = retrofit(tiny_vit(), iters=2)
    perturb_dec(model)
    model.eval()
    # a torch.compile wrapper is unwrapped: keys stay the timm model's own
    path = save_model(torch.compile(model), tmp_path / "m.safetensors", command="test", seed=3,
                      data={"name": "none"}, class_names=list("abcde"))
    loaded = load_model(path)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(model(X), loaded(X))
    info = loaded.dec_info
    assert info["model_name"] == "test_vit" and info["num_classes"] == 5 and info["dec"] is True
    assert info["class_names"] == list("abcde") and info["model_kwargs"] == KW
    assert info["provenance"]["seed"] == 3 and info["provenance"]["versions"]["torch"] == torch.__version__
    assert dec_modules(loaded)[0].settings.iters == 2
    regrown = load_model(path, num_classes=3)  # a new head for another label set
    assert regrown(X).shape == (2, 3) and regrown.dec_info["class_names"] is None
    # a plain (non-DEC) model round-trips too, and load_model takes a timm name
    plain = tiny_vit()
    save_model(plain, tmp_path / "p.safetensors")
    back = load_model(tmp_path / "p.safetensors")
    with torch.no_grad():
        assert torch.equal(plain(X), back(X))
    assert back.dec_info["dec"] is False and not dec_modules(back)


def test_load_timm_name_with_local_weights(vit_weights):
    model = load_model("test_vit", weights=vit_weights, img_size=32, patch_size=8)
    ref = tiny_vit()
    with torch.no_grad():
        assert torch.equal(model(X), ref(X))
    assert model.dec_info["num_classes"] == 5  # inferred from the weights' head
    assert model.dec_info["dec"] is False and model.dec_info["model_name"] == "test_vit"
    new_head = load_model("test_vit", weights=vit_weights, num_classes=3, img_size=32, patch_size=8)
    assert new_head(X).shape == (2, 3)  # head dropped, the rest loaded
    assert torch.equal(new_head.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)


def test_cli_retrofit_then_info(run_dec, tmp_path):
    torch.manual_seed(0)
    vit_weights = tmp_path / "vit16.safetensors"  # test_vit at 32x32 with its own 16x16 patches
    save_file(create_backbone("test_vit", num_classes=5, img_size=32).state_dict(), str(vit_weights))
    out = tmp_path / "dec_vit.safetensors"
    r = run_dec("retrofit", "test_vit", "--weights", vit_weights, "--img-size", "32", "--at", "blocks.0,blocks.2",
                "--grid", "3", "--iters", "2", "-o", out, "--json", tmp_path / "r.json")
    assert r.code == 0, r.err
    assert "blocks.0" in r.out and "tokens" in r.out and "parameters: DEC" in r.out
    summary = json.loads((tmp_path / "r.json").read_text())
    assert [p["path"] for p in summary["points"]] == ["blocks.0", "blocks.2"]
    assert summary["parameters"]["dec"] > 0 and summary["parameters"]["dec_fraction"] < 0.05
    # the file reproduces the backbone's logits (identity at init)
    with torch.no_grad():
        assert (load_model(out)(X) - load_model("test_vit", weights=vit_weights, img_size=32)(X)
                ).abs().max() <= 1e-4

    r = run_dec("info", out, "--json", "-")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert info["model_name"] == "test_vit" and info["num_classes"] == 5 and info["dec"] is True
    assert [p["path"] for p in info["insertion_points"]] == ["blocks.0", "blocks.2"]
    assert info["dec_settings"]["grid"] == 3 and info["dec_settings"]["iters"] == 2
    assert info["parameters"]["dec"] == summary["parameters"]["dec"]
    assert info["provenance"]["weights"] == str(vit_weights) and "retrofit" in info["provenance"]["command"]
    r = run_dec("info", out)
    assert r.code == 0 and "test_vit" in r.out and "blocks.2" in r.out

    r = run_dec("retrofit", "test_vit", "--weights", vit_weights, "--img-size", "32", "-o", out)
    assert r.code == 2 and "exists" in r.err and "--force" in r.err


def test_cli_models_lists_recipes(run_dec):
    r = run_dec("models", "--json", "-")
    assert r.code == 0, r.err
    recipes = {d["name"]: d for d in json.loads(r.out)["recipes"]}
    assert {"vit", "deit", "beit", "swin", "resnet", "convnext"} <= set(recipes)
    assert recipes["swin"]["layout"] == "nhwc" and recipes["vit"]["covered_models"] > 10
    r = run_dec("models")
    assert r.code == 0 and "convnext" in r.out


def test_offline_without_weights_names_both_options(run_dec, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run_dec("retrofit", "resnet18", "--pretrained", "-o", tmp_path / "x.safetensors")
    assert r.code == 1
    assert r.err.count("\n") == 1 and r.err.startswith("error:")
    assert "--weights" in r.err and "--pretrained" in r.err
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_bad_options(run_dec, tmp_path):
    r = run_dec("retrofit", "test_vit", "--random-init", "-o", tmp_path / "x.pt")
    assert r.code == 2 and "safetensors" in r.err
    r = run_dec("retrofit", "no_such_model_xyz", "--random-init", "-o", tmp_path / "x.safetensors")
    assert r.code == 2 and "unknown timm model" in r.err
    r = run_dec("retrofit", "test_vit", "--random-init", "--at", "blocks.99", "-o", tmp_path / "x.safetensors")
    assert r.code == 2 and "blocks.99" in r.err and "blocks.0" in r.err
    r = run_dec("info", tmp_path / "missing.safetensors")
    assert r.code == 2 and "no such checkpoint" in r.err
    r = run_dec("retrofit", "test_vit", "--random-init", "--mode", "sideways", "-o", tmp_path / "x.safetensors")
    assert r.code == 2 and "--mode" in r.err
    r = run_dec("retrofit", "test_vit", "--pretrained", "--weights", tmp_path / "w.pth", "-o", tmp_path / "x.safetensors")
    assert r.code == 2 and "exclude each other" in r.err
    r = run_dec("retrofit", "test_vit", "--random-init", "--recipe", "nosuch", "-o", tmp_path / "x.safetensors")
    assert r.code == 2 and "unknown recipe 'nosuch'" in r.err and "convnext" in r.err
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    r = run_dec("info", plain)
    assert r.code == 1 and "not a dec checkpoint" in r.err
    assert not (tmp_path / "x.safetensors").exists()


# --------------------------------------------------------------------------- unsafe and broken files


class _Boom:
    """Unpickling this would create the marker file (arbitrary code execution)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("how", ["torch_zip", "raw_pickle"])
def test_pickled_code_is_refused_and_never_run(run_dec, tmp_path, how):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    payload = {"weight": torch.zeros(2), "x": _Boom(str(marker))}
    if how == "torch_zip":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DecError, match="pickled code; refused"):
        load_model("test_vit", weights=evil, img_size=32, patch_size=8)
    r = run_dec("retrofit", "test_vit", "--weights", evil, "-o", tmp_path / "o.safetensors")
    assert r.code == 1 and "refused" in r.err and r.err.count("\n") == 1
    assert not marker.exists()


def _damage(tmp_path: Path, kind: str) -> Path:
    good = tmp_path / "good.safetensors"
    save_model(retrofit(tiny_vit()), good)
    data = good.read_bytes()
    bad = tmp_path / f"{kind}.safetensors"
    if kind == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        bad.write_bytes(b"\x13\x37" * 500)
    elif kind == "empty":
        bad.write_bytes(b"")
    return bad


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_corrupt_files_are_refused(run_dec, tmp_path, kind):
    bad = _damage(tmp_path, kind)
    with pytest.raises(DecError, match="not a readable safetensors file"):
        load_model(bad)
    r = run_dec("info", bad)
    assert r.code == 1 and r.err.startswith("error:") and r.err.count("\n") == 1
    torn = tmp_path / "torn.pth"
    torn.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DecError, match="not a readable PyTorch weights file"):
        load_model("test_vit", weights=torn)


def _with_metadata(tmp_path: Path, meta: dict | None, tensors=None) -> Path:
    model = tiny_vit()
    path = tmp_path / "m.safetensors"
    tensors = tensors if tensors is not None else {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=None if meta is None else {"dec": json.dumps(meta)})
    return path


def test_format_version_nan_and_shape_errors(tmp_path):
    base = {"model_name": "test_vit", "model_kwargs": KW, "num_classes": 5, "dec": False}
    with pytest.raises(DecError, match="no format version"):
        load_model(_with_metadata(tmp_path, base))
    with pytest.raises(DecError, match="unknown checkpoint format version 99"):
        read_metadata(_with_metadata(tmp_path, {**base, "format_version": 99}))
    with pytest.raises(DecError, match="not a dec checkpoint"):
        load_model(_with_metadata(tmp_path, None))
    state = {k: v.clone().contiguous() for k, v in tiny_vit().state_dict().items()}
    state["blocks.1.mlp.fc1.weight"][0, 0] = float("nan")
    with pytest.raises(DecError, match=r"'blocks.1.mlp.fc1.weight' contains NaN or Inf"):
        load_model(_with_metadata(tmp_path, {**base, "format_version": 1}, state))
    with pytest.raises(DecError, match=r"shape mismatch for 'head\.(weight|bias)'"):
        load_model(_with_metadata(tmp_path, {**base, "format_version": 1, "num_classes": 9}))
    wrong = tmp_path / "wrong.pth"
    torch.save({"weight": torch.zeros(3)}, wrong)
    with pytest.raises(DecError, match="lacks"):
        load_model("test_vit", weights=wrong, img_size=32, patch_size=8)
    with pytest.raises(UsageError, match="no such checkpoint"):
        load_model(tmp_path / "nope.safetensors")


def test_offline_pretrained_weights_come_from_the_hub_cache(run_dec, tmp_path, monkeypatch):
    """Users on offline clusters pre-fill the hub cache; --pretrained must then work without a network."""
    import huggingface_hub.constants as hub
    import timm

    torch.manual_seed(3)
    reference = timm.create_model("test_vit", pretrained=False)
    repo = tmp_path / "hub" / "models--timm--test_vit.r160_in1k"  # the hub cache layout
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()},
              str(repo / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    switch = hub.HF_HUB_OFFLINE
    r = run_dec("retrofit", "test_vit", "--pretrained", "-o", tmp_path / "cached.safetensors")
    assert r.code == 0, r.err
    assert hub.HF_HUB_OFFLINE == switch  # huggingface_hub's switch is put back
    own = load_model(str(tmp_path / "cached.safetensors")).state_dict()
    theirs = reference.state_dict()
    common = [k for k in theirs if k in own]  # retrofit wraps one block, renaming its tensors
    assert len(common) > len(theirs) // 2 and all(torch.equal(own[k], theirs[k]) for k in common)
    # not in the cache: one line naming both ways out
    r = run_dec("retrofit", "test_convnext", "--pretrained", "-o", tmp_path / "missing.safetensors")
    assert r.code == 1 and r.err.count("\n") == 1 and "local cache" in r.err and "--weights" in r.err
