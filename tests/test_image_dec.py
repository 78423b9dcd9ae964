"""The image DEC (``dec retrofit --dec-input image``): identity at init on every recipe family, a bounded
absolute update that reaches a fixed point, checkpoints that round-trip, one compiled graph."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from dec_cli.backbones.checkpoint import load_model, save_model
from dec_cli.canon.canonicalizer import DEC
from dec_cli.canon.imagedec import IMAGE_SIDE, LOGIT_BOUND, ImageDEC
from dec_cli.canon.retrofit import dec_modules, retrofit
from dec_cli.core.errors import UsageError
from test_retrofit import FAMILIES, build


def _perturb(model: torch.nn.Module, scale: float = 2.0) -> None:
    """Give every image DEC's output layer random weights, so its warps differ from the identity."""
    g = torch.Generator().manual_seed(5)
    for m in dec_modules(model):
        m.out.weight.data = torch.randn(m.out.weight.shape, generator=g) * scale
        m.out.bias.data = torch.randn(m.out.bias.shape, generator=g) * scale


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_identity_at_init_on_every_family(family):
    name, kwargs, size = FAMILIES[family]
    plain = build(name, kwargs)
    model = retrofit(copy.deepcopy(plain), img_size=size[0], dec_input="image")
    decs = dec_modules(model)
    assert decs and all(isinstance(d, ImageDEC) and d.in_channels == 3 for d in decs)
    assert model.dec_info["recipe"]["input"] == "image"
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (plain(x) - model(x)).abs().max().item()
    assert diff <= 1e-4


def _perturbed_resnet(scale: float, seed: int, batch: int = 3, **settings):
    """A test_resnet with one perturbed image DEC, the DEC and a batch of random images for it."""
    name, kwargs, size = FAMILIES["resnet"]
    model = retrofit(build(name, kwargs), img_size=size[0], dec_input="image", **settings)
    _perturb(model, scale=scale)
    return model, dec_modules(model)[0], torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_the_dec_looks_at_the_input_image_and_its_update_is_bounded():
    model, dec, x = _perturbed_resnet(3.0, 2, iters=6, damping=1.0)
    with torch.no_grad():
        model(x)
        tx, ty = dec.logits
        assert tx.abs().max() <= 2 * LOGIT_BOUND and ty.abs().max() <= 2 * LOGIT_BOUND  # bound, less its row mean
        assert tx.abs().max() > 0.1  # the perturbed CNN moves the warp
        first = tx.clone()
        model(x.flip(-1))  # another image gives another warp: the DEC reads the image, not constants
        assert not torch.allclose(dec.logits[0], first)


def test_damped_update_converges_when_it_contracts():
    """Small output weights make the update a contraction: the last step's residual falls with the iterations."""
    model, dec, x = _perturbed_resnet(0.05, 3, batch=2, iters=3, damping=0.5)
    with torch.no_grad():
        model(x)
        early = dec.residual.max().item()
        dec.settings = replace(dec.settings, iters=12)
        model(x)
        late = dec.residual.max().item()
    assert 0 < late < early / 4 and late < 0.01


def test_checkpoint_round_trip_keeps_the_kind_and_the_outputs(tmp_path):
    name, kwargs, size = FAMILIES["convnext"]
    model = retrofit(build(name, kwargs), img_size=size[0], dec_input="image")
    _perturb(model)
    path = tmp_path / "img.safetensors"
    save_model(model, path)
    again = load_model(str(path))
    assert isinstance(dec_modules(again)[0], ImageDEC)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), again(x), atol=1e-5)


def test_latent_checkpoints_do_not_record_an_input_key(tmp_path):
    """Old checkpoints (no ``input`` key) load as latent DECs, and new latent ones are written as before."""
    name, kwargs, size = FAMILIES["resnet"]
    model = retrofit(build(name, kwargs), img_size=size[0])
    assert "input" not in model.dec_info["recipe"]
    path = tmp_path / "latent.safetensors"
    save_model(model, path)
    decs = dec_modules(load_model(str(path)))
    assert decs and all(type(d) is DEC for d in decs)


def test_unknown_input_is_a_usage_error():
    name, kwargs, size = FAMILIES["resnet"]
    with pytest.raises(UsageError, match="unknown DEC input 'pixels'"):
        retrofit(build(name, kwargs), img_size=size[0], dec_input="pixels")


def test_image_dec_compiles_as_one_graph():
    name, kwargs, size = FAMILIES["resnet"]
    model = retrofit(build(name, kwargs), img_size=size[0], dec_input="image", iters=3).eval()
    _perturb(model)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(6))
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


def test_image_cnn_is_small_next_to_the_backbone():
    dec = ImageDEC(3)
    assert sum(p.numel() for p in dec.parameters()) < 5000
    assert dec.project(torch.rand(1, 3, 224, 160)).shape[-2:] == (IMAGE_SIDE, IMAGE_SIDE)


def test_cli_retrofit_dec_input_image(tmp_path):
    out = tmp_path / "img.safetensors"
    proc = subprocess.run([sys.executable, "-m", "dec_cli", "retrofit", "test_resnet", "--random-init",
                           "--dec-input", "image", "-o", str(out), "--json", "-", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dec_input"] == "image"
    bad = subprocess.run([sys.executable, "-m", "dec_cli", "retrofit", "test_resnet", "--random-init",
                          "--dec-input", "pixels", "-o", str(tmp_path / "b.safetensors")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "features" in bad.stderr and "image" in bad.stderr
    assert not (tmp_path / "b.safetensors").exists()


def test_dec_info_names_the_image_input(tmp_path):
    name, kwargs, size = FAMILIES["resnet"]
    path = tmp_path / "img.safetensors"
    save_model(retrofit(build(name, kwargs), img_size=size[0], dec_input="image"), path)
    proc = subprocess.run([sys.executable, "-m", "dec_cli", "info", str(path), "--json", "-"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["dec_input"] == "image"
    table = subprocess.run([sys.executable, "-m", "dec_cli", "info", str(path)], capture_output=True, text=True,
                           timeout=120)
    assert "input image" in table.stdout


def test_one_channel_models_get_a_one_channel_image_dec():
    plain = build("test_resnet", {"in_chans": 1})
    model = retrofit(copy.deepcopy(plain), img_size=48, dec_input="image")
    assert dec_modules(model)[0].in_channels == 1
    x = torch.randn(2, 1, 48, 48, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert (plain(x) - model(x)).abs().max().item() <= 1e-4
