"""Canonicalization diagnostics in `dec evaluate`: canon_error and residual_by_iter of DEC models."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from dec_cli.backbones.backbone import create_backbone
from dec_cli.backbones.checkpoint import load_model, save_model
from dec_cli.trees.data import eval_transform, load_image, scan_image_folder
from dec_cli.canon.diagnostics import Probe, capture, dec_blocks
from dec_cli.evaluation.evaluate import EvalSettings, image_warps
from dec_cli.canon.retrofit import dec_modules, retrofit
from dec_cli.warps.apply import apply_warp
from test_evaluate import CLASSES, IMG, make_tree, make_zoom_tree

ITERS = 4
WARPS = 2


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """A DEC head that proposes real (non-identity) warps, as after training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for dec in dec_modules(model):
            for p in dec.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    base = tmp_path_factory.mktemp("diag")
    torch.manual_seed(0)
    ckpts = {}
    for name, kwargs in (("test_resnet", {}), ("test_vit", {"img_size": 32, "patch_size": 4})):
        plain = create_backbone(name, num_classes=3, model_kwargs=kwargs)
        model = retrofit(plain, iters=ITERS, img_size=int(IMG))
        ckpts[name] = save_model(model, base / f"{name}-id.safetensors", class_names=CLASSES)
    trained = retrofit(load_model("test_resnet", num_classes=3), iters=ITERS, grid=4)
    _randomize(trained)
    ckpts["random"] = save_model(trained, base / "random.safetensors", class_names=CLASSES)
    weights = base / "plain3.pt"
    torch.save(load_model("test_resnet", num_classes=3).state_dict(), weights)
    (base / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return {"ckpt": ckpts, "weights": weights, "class_map": base / "classes.txt",
            "tree": make_tree(base / "tree", per_class=2, odd_modes=False, corrupt=False),
            "zoom": make_zoom_tree(base / "zoom", sources=1)}


def _doc(run_dec, *args):
    result = run_dec("evaluate", *args, "--img-size", IMG, "--json", "-", "--quiet")
    assert result.code == 0, result.err
    return json.loads(result.out)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_identity_dec_undoes_nothing(run_dec, assets, name):
    """At init every DEC proposes the identity warp: canonicalized == received, so the ratio is 1."""
    doc = _doc(run_dec, assets["ckpt"][name], "--data", assets["tree"], "--warps", str(WARPS))
    model = doc["models"][0]
    assert model["metrics"]["canon_error"] == pytest.approx(1.0, abs=1e-4)
    paths = [p for p, _ in dec_blocks(load_model(assets["ckpt"][name]))]
    assert [m["path"] for m in model["dec_modules"]] == paths and paths
    for row in model["dec_modules"]:
        assert row["canon_error"] == pytest.approx(1.0, abs=1e-4)
        assert row["residual_by_iter"] == [0.0] * ITERS


def test_canon_error_and_residual_by_iter_by_hand(run_dec, assets):
    ckpt = assets["ckpt"]["random"]
    doc = _doc(run_dec, ckpt, "--data", assets["tree"], "--warps", str(WARPS), "--seed", "2", "--batch-size", "4")
    metrics, (row,) = doc["models"][0]["metrics"], doc["models"][0]["dec_modules"]
    # By hand: hooks on the DEC block (what it receives) and on its inner block (what it hands on).
    model = load_model(ckpt)
    (path, block), = dec_blocks(model)
    seen = {}
    block.register_forward_pre_hook(lambda m, a: seen.__setitem__("feat", a[0].flatten(1)))
    block.block.register_forward_pre_hook(lambda m, a: seen.__setitem__("canon", a[0].flatten(1)))
    tf = eval_transform(model, int(IMG))
    settings = EvalSettings(warps=WARPS, seed=2)
    num = den = 0.0
    inputs = []
    with torch.no_grad():
        for s in scan_image_folder(assets["tree"]).samples:
            x = tf(load_image(s.path)).unsqueeze(0)
            xw = apply_warp(x.repeat(WARPS, 1, 1, 1), image_warps(s.rel, WARPS, settings))
            inputs.append((x, xw))
            model(x)
            feat, canon = seen["feat"], seen["canon"]
            model(xw)
            num += float((canon - seen["canon"]).norm(dim=1).sum())
            den += float((feat - seen["feat"]).norm(dim=1).sum())
    assert row["path"] == path == "layer2"
    assert row["canon_error"] == pytest.approx(num / den, rel=1e-5)
    assert metrics["canon_error"] == row["canon_error"] and abs(row["canon_error"] - 1) > 0.01
    # The t-th residual is the last residual of the same solver stopped after t iterations.
    assert len(row["residual_by_iter"]) == ITERS
    for t in range(1, ITERS + 1):
        short = copy.deepcopy(model)
        dec = dec_modules(short)[0]
        dec.settings = dataclasses.replace(dec.settings, iters=t)
        per_image = []
        with torch.no_grad():
            for x, xw in inputs:
                short(x)
                clean = float(dec.residual[0])
                short(xw)
                per_image.append((clean + float(dec.residual.sum())) / (1 + WARPS))
        assert row["residual_by_iter"][t - 1] == pytest.approx(sum(per_image) / len(per_image), rel=1e-4, abs=1e-7)
    assert row["residual_by_iter"][-1] == pytest.approx(metrics["residual_mean"], rel=1e-6)
    assert row["residual_by_iter"][0] > 0


def test_plain_models_get_nulls_and_zoom_sweeps_have_no_canon_error(run_dec, assets):
    doc = _doc(run_dec, "test_resnet", "--weights", assets["weights"], assets["ckpt"]["random"],
               "--data", assets["zoom"], "--class-map", assets["class_map"])
    plain, dec = doc["models"]
    assert plain["metrics"]["canon_error"] is None and plain["dec_modules"] == []
    # A zoom sweep has no random warps (0 by default): no canon_error, but the solver's convergence.
    assert dec["metrics"]["canon_error"] is None
    (row,) = dec["dec_modules"]
    assert row["canon_error"] is None and len(row["residual_by_iter"]) == ITERS


def test_tables_and_markdown_show_the_modules(run_dec, assets, tmp_path):
    md = tmp_path / "r.md"
    result = run_dec("evaluate", assets["ckpt"]["random"], "--data", assets["tree"], "--img-size", IMG,
                     "--warps", "1", "--markdown", md)
    assert result.code == 0, result.err
    assert "DEC canon. error" in result.out and "residual by iteration" in result.out
    text = md.read_text()
    assert "## DEC modules" in text and "| random | layer2 |" in text


# --------------------------------------------------------------------------- --fail-if


def test_fail_if_canon_error(run_dec, assets):
    args = ("evaluate", assets["ckpt"]["test_resnet"], "--data", assets["tree"], "--img-size", IMG, "--warps", "1",
            "--quiet")
    assert run_dec(*args, "--fail-if", "canon_error>1.5").code == 0
    failed = run_dec(*args, "--fail-if", "canon_error>0.9")
    assert failed.code == 1 and "canon_error" in failed.err


@pytest.mark.parametrize("extra, message", [
    (("test_resnet", "--weights", "W", "--warps", "1"), "no model has DEC modules"),
    (("CKPT", "--warps", "0"), "needs random warps"),
])
def test_fail_if_canon_error_that_cannot_be_computed_exits_2(run_dec, assets, extra, message):
    extra = [str(assets["weights"]) if a == "W" else str(assets["ckpt"]["test_resnet"]) if a == "CKPT" else a
             for a in extra]
    result = run_dec("evaluate", *extra, "--data", assets["tree"], "--img-size", IMG, "--quiet",
                     "--fail-if", "canon_error>0.9")
    assert result.code == 2 and message in result.err, result.err


# --------------------------------------------------------------------------- capture stays out of the way


def test_capture_is_off_outside_the_context_and_compiles(assets):
    model = load_model(assets["ckpt"]["random"]).eval()
    (_, block), = dec_blocks(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
        assert block.captured is None and block.dec.residual_by_iter is None
        compiled = torch.compile(block, fullgraph=True, backend="eager")
        feats = torch.randn(2, block.dec.in_channels, 8, 8)
        try:
            with capture([block]):
                probe = Probe([block], 0)
                out = compiled(feats)
                probe.clean()
                eager = block(feats)
                assert block.dec.residual_by_iter.shape == (2, ITERS)
        finally:
            # Later compiles of DECBlock.forward must not start from this one's cache (automatic dynamic shapes).
            torch._dynamo.reset()
        torch.testing.assert_close(out, eager)
        assert probe.records()["res_iter.0"].shape == (2, ITERS)
    assert block.captured is None and not block.capture and not block.dec.capture


def test_pinned_warp_records_zero_updates(assets):
    """A pinned DEC (diagnostics, ablations) makes no solver updates: its residual series is all zeros."""
    model = load_model(assets["ckpt"]["random"]).eval()
    (_, block), = dec_blocks(model)
    block.dec.pin(torch.linspace(-0.5, 0.5, 4).view(1, 4))
    with torch.no_grad(), capture([block]):
        model(torch.randn(3, 3, 32, 32))
        assert torch.equal(block.dec.residual_by_iter, torch.zeros(3, ITERS))
        feat, canon = block.captured
        assert feat.shape == canon.shape and not torch.equal(feat, canon)  # the pinned warp is applied
