"""``residual_rel``: the DEC's relative residual of its last update on the warp's knots, and its report
in ``dec evaluate`` (metric, per-DEC list, table row, ``--fail-if``), checked against hand computations."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dec_cli.backbones.checkpoint import load_model, save_model
from dec_cli.canon.canonicalizer import DEC
from dec_cli.canon.retrofit import dec_modules, retrofit
from dec_cli.evaluation.evaluate import EvalSettings, image_warps
from dec_cli.evaluation.evalresiduals import ResidualLog, relative_residuals
from dec_cli.trees.data import eval_transform, load_image, scan_image_folder
from dec_cli.warps.apply import apply_warp
from test_evaluate import CLASSES, make_tree  # noqa: E402  (tests/ is on sys.path under pytest)

IMG = "32"
WARPS = 2


def by_hand(theta_before: torch.Tensor, theta_after: torch.Tensor, dec: DEC) -> torch.Tensor:
    """``||k(after) - k(before)|| / ||k(after)||`` over the interior knots (cumulative softmax), per sample."""
    def knots(theta):
        k = torch.softmax(theta.double().unflatten(1, (2, dec.settings.rows, dec.settings.grid)), -1).cumsum(-1)
        return k[..., :-1].flatten(1)
    a, b = knots(theta_after), knots(theta_before)
    return ((a - b).norm(dim=1) / a.norm(dim=1)).float()


def flat(logits) -> torch.Tensor:
    return torch.cat([t.flatten(1) for t in logits], dim=1)


def perturbed(dec: DEC, seed: int = 0, std: float = 1.0) -> DEC:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dec.out.weight.copy_(torch.randn(dec.out.weight.shape, generator=gen) * std)
        dec.conv.weight.copy_(torch.randn(dec.conv.weight.shape, generator=gen) * 0.3)
    return dec


def features(b: int = 3) -> torch.Tensor:
    return torch.randn(b, 8, 10, 10, generator=torch.Generator().manual_seed(1))


def test_zero_at_init_for_any_iteration_count():
    for iters, grad_steps in ((1, 1), (3, 1), (2, 2)):
        dec = DEC(8, iters=iters, grad_steps=grad_steps)
        dec(features())
        assert torch.equal(dec.residual_rel, torch.zeros(3))


@pytest.mark.parametrize("iters,grad_steps", [(4, 1), (3, 3), (1, 1)])
def test_matches_the_knots_before_and_after_the_last_update(iters, grad_steps):
    torch.manual_seed(0)
    dec = perturbed(DEC(8, iters=iters, grad_steps=grad_steps, rows=2, grid=5))
    x = features()
    dec(x)
    after = flat(dec.logits)
    # Re-run the trajectory to the last update's start: the identity (zero logits) for a single iteration.
    if iters > 1:
        prev = DEC(8, iters=iters - 1, grad_steps=min(grad_steps, iters - 1), rows=2, grid=5)
        prev.load_state_dict(dec.state_dict())
        with torch.no_grad():
            prev(x)
        before = flat(prev.logits)
    else:
        before = torch.zeros_like(after)
    with torch.no_grad():  # the last step once more, by hand
        assert torch.allclose(dec._step(dec.project(x, "nchw"), before), after, atol=1e-6)
    rel = dec.residual_rel
    assert rel.shape == (3,) and rel.dtype == torch.float32 and not rel.requires_grad
    assert (rel > 0).all()
    assert torch.allclose(rel, by_hand(before, after, dec), rtol=1e-4, atol=1e-7)
    assert dec.residual is not None and torch.allclose(dec.residual, (after - before).norm(dim=1), atol=1e-5)


def test_anderson_and_pinned_and_compiled():
    torch.manual_seed(0)
    dec = perturbed(DEC(8, iters=4, solver="anderson"))
    x = features(2)
    dec(x)
    assert (dec.residual_rel > 0).all()
    eager = dec.residual_rel.clone()
    dec.residual_rel = None
    with torch.no_grad():  # fullgraph: no graph break (host sync, value-dependent branch) in the forward
        torch.compile(dec, fullgraph=True, backend="eager")(x)
    assert torch.allclose(dec.residual_rel, eager, atol=1e-6)
    dec.pin(torch.randn(1, 4))
    dec(x)
    assert torch.equal(dec.residual_rel, torch.zeros(2))


def test_a_dec_kind_without_residual_rel_is_skipped():
    class OtherDEC(nn.Module):  # a DEC kind that reports a residual but no residual_rel
        residual = torch.ones(2)

    dec = DEC(8)
    dec(features(2))
    log = ResidualLog([dec, OtherDEC()], [dec])
    log.after(2)
    rec = log.records(2, 0)
    assert rec["res_rel"].shape == (2, 1) and rec["res_mean"].shape == (2,)
    assert relative_residuals([], 2) is None  # no DEC measures it: no residual_rel records at all
    assert "res_rel" not in ResidualLog([OtherDEC()], []).records(2, 0)


# --------------------------------------------------------------------------- dec evaluate


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A small tree, a DEC checkpoint with two perturbed DECs, and an identity (untrained) one."""
    base = tmp_path_factory.mktemp("rel")
    torch.manual_seed(0)
    model = load_model("test_resnet", num_classes=3)
    retrofit(model, at=["layer2", "layer3"])
    save_model(model, base / "identity.safetensors", class_names=CLASSES)
    for i, dec in enumerate(dec_modules(model)):
        perturbed(dec, seed=i, std=2.0)
    save_model(model, base / "moved.safetensors", class_names=CLASSES)
    return {"tree": make_tree(base / "tree", per_class=1, odd_modes=False, corrupt=False), "base": base,
            "moved": base / "moved.safetensors", "identity": base / "identity.safetensors"}


def _evaluate(run_dec, *args):
    return run_dec("evaluate", *args, "--img-size", IMG, "--warps", str(WARPS), "--batch-size", "2", "--no-labels")


def test_evaluate_reports_residual_rel_per_dec_as_computed_by_hand(run_dec, assets, tmp_path):
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    result = _evaluate(run_dec, assets["moved"], assets["identity"], "test_resnet", "--random-init",
                       "--data", assets["tree"], "--json", out, "--markdown", md)
    assert result.code == 0, result.err
    assert "DEC residual rel." in result.out
    moved, identity, plain = json.loads(out.read_text())["models"]
    # By hand: every image's clean forward and its warped copies, one image at a time.
    model = load_model(str(assets["moved"]))
    decs = dec_modules(model)
    tf = eval_transform(model, int(IMG))
    sums = [0.0] * len(decs)
    forwards = 0
    with torch.no_grad():
        for s in scan_image_folder(assets["tree"]).samples:
            x = tf(load_image(s.path)).unsqueeze(0)
            xw = apply_warp(x.repeat(WARPS, 1, 1, 1), image_warps(s.rel, WARPS, EvalSettings(warps=WARPS)))
            for view in (x, xw):
                model(view)
                for m, dec in enumerate(decs):
                    sums[m] += float(dec.residual_rel.double().sum())
            forwards += 1 + WARPS
    means = [v / forwards for v in sums]
    assert [row["path"] for row in moved["residual_rel_by_dec"]] == ["layer2.dec", "layer3.dec"]
    for row, mean in zip(moved["residual_rel_by_dec"], means):
        assert row["residual_rel"] == pytest.approx(mean, rel=1e-4)
    assert moved["metrics"]["residual_rel"] == max(r["residual_rel"] for r in moved["residual_rel_by_dec"]) > 0
    assert identity["metrics"]["residual_rel"] == 0.0
    assert [r["residual_rel"] for r in identity["residual_rel_by_dec"]] == [0.0, 0.0]
    assert plain["dec"] is False and plain["metrics"]["residual_rel"] is None
    assert plain["residual_rel_by_dec"] == []
    # The tables (Markdown: no terminal width to wrap them): the model row, and each module's value
    # beside its residual by iteration in "DEC modules".
    text = md.read_text()
    assert f"| DEC residual rel. | {moved['metrics']['residual_rel']:.4g} | 0 | - |" in text
    assert "| residual by iteration | residual rel. |" in text
    for row in moved["residual_rel_by_dec"]:
        assert any(ln.startswith(f"| moved | {row['path'][:-4]} |") and ln.endswith(f"| {row['residual_rel']:.3g} |")
                   for ln in text.splitlines()), row


def test_fail_if_residual_rel(run_dec, assets):
    base = ("--data", assets["tree"], "--quiet")
    value = json.loads(_evaluate(run_dec, assets["moved"], *base, "--json", "-").out)["models"][0]["metrics"][
        "residual_rel"]
    bad = _evaluate(run_dec, assets["moved"], *base, "--fail-if", f"residual_rel>{value / 2}")
    assert bad.code == 1 and bad.err.startswith("error: 1 --fail-if rule(s) violated: moved: residual_rel = ")
    ok = _evaluate(run_dec, assets["identity"], *base, "--fail-if", "residual_rel>0.05")
    assert ok.code == 0, ok.err
    no_dec = _evaluate(run_dec, "test_resnet", "--random-init", *base, "--fail-if", "residual_rel>0.05")
    assert no_dec.code == 2 and "no model has DEC modules" in no_dec.err
    unknown = _evaluate(run_dec, assets["moved"], *base, "--fail-if", "residual_rell>1")
    assert unknown.code == 2 and "residual_rel" in unknown.err  # the hint lists the known metrics


def test_torchrun_gives_the_single_process_values(run_dec, assets, tmp_path):
    from test_evaluate_ddp import _single_and_torchrun

    args = ["evaluate", str(assets["moved"]), "--data", str(assets["tree"]), "--img-size", IMG, "--warps", "1",
            "--batch-size", "1", "--no-labels", "--device", "cpu", "--quiet"]
    one, two = (doc["models"][0] for doc in _single_and_torchrun(run_dec, args, tmp_path))
    assert two["timing"]["world_size"] == 2 and one["metrics"]["residual_rel"] > 0
    assert two["metrics"]["residual_rel"] == pytest.approx(one["metrics"]["residual_rel"], rel=1e-6)
    assert [r["path"] for r in two["residual_rel_by_dec"]] == [r["path"] for r in one["residual_rel_by_dec"]]
    assert [r["residual_rel"] for r in two["residual_rel_by_dec"]] == pytest.approx(
        [r["residual_rel"] for r in one["residual_rel_by_dec"]], rel=1e-6)
