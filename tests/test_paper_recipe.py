"""The paper's training recipe in `dec finetune`: DEC-only warmup, a DEC rate 1e5 times the backbone's,
the logits consistency loss, and a DEC retrofitted onto a warp-augmentation checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from test_finetune import CLASSES, FAST, SIZE, _rows, make_dec_checkpoint, make_shapes

#: The paper's ImageNet settings: DEC 1e-2, backbone 1e-7.
PAPER_LRS = ["--dec-lr", "1e-2", "--lr", "1e-7"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), n_train=4, n_val=2)


@pytest.fixture(scope="module")
def dec_ckpt(tmp_path_factory):
    return make_dec_checkpoint(tmp_path_factory.mktemp("ckpt") / "dec.safetensors")


def test_paper_learning_rates_reach_the_optimizer_unclamped(dec_ckpt):
    """Every step's backbone rate is exactly 1e-5 of the DEC's; nothing raises or clips 1e-7 and 1e-2."""
    from dec_cli.backbones.checkpoint import load_model
    from dec_cli.training.finetune_options import FinetuneConfig
    from dec_cli.training.optimizer import Schedule, split_parameters

    cfg = FinetuneConfig(epochs=3, lr=1e-7, dec_lr=1e-2, warmup_epochs=1)
    schedule = Schedule(split_parameters(load_model(str(dec_ckpt)), False), cfg, steps_per_epoch=4)
    for step in range(schedule.total_steps - 1):  # the last step's rates are 0 at the end of the cosine
        lrs = schedule.set_lrs(step)
        assert lrs["backbone"] == pytest.approx(1e-5 * lrs["dec"], rel=1e-9) and lrs["dec"] > 0
    assert max(schedule.set_lrs(s)["dec"] for s in range(12)) == pytest.approx(1e-2, rel=0.3)


def test_paper_rates_with_dec_warmup_move_the_backbone_by_almost_nothing(run_dec, shapes, dec_ckpt, tmp_path):
    out = tmp_path / "run"
    r = run_dec("finetune", dec_ckpt, shapes, "-o", out, "--epochs", "2", "--dec-warmup-epochs", "1",
                "--warmup-epochs", "0", *PAPER_LRS, *FAST, "--quiet")
    assert r.code == 0, r.err
    rows = _rows(out)
    assert float(rows[0]["lr_backbone"]) == 0.0 and float(rows[0]["lr_dec"]) > 0  # DEC-only first epoch
    assert 0 < float(rows[1]["lr_backbone"]) <= 1e-7
    start, after = load_file(str(dec_ckpt)), load_file(str(out / "last.safetensors"))
    moved = {k: float((after[k].float() - start[k].float()).abs().max()) for k in start if start[k].is_floating_point()}
    backbone = [v for k, v in moved.items() if ".dec." not in k]
    assert 0 < max(backbone) < 1e-5 < max(v for k, v in moved.items() if ".dec." in k)


def _train_loss(run_dec, shapes, ckpt, out, weight: str) -> float:
    """Train loss of one epoch in which nothing moves (rates 0, backbone and its norms held)."""
    r = run_dec("finetune", ckpt, shapes, "-o", out, "--epochs", "1", "--lr", "0", "--dec-lr", "0",
                "--freeze-backbone", "--consistency-weight", weight, *FAST, "--quiet")
    assert r.code == 0, r.err
    return float(_rows(out)[0]["train_loss"])


def test_consistency_weight_adds_a_nonnegative_term_linear_in_its_weight(run_dec, shapes, dec_ckpt, tmp_path):
    losses = [_train_loss(run_dec, shapes, dec_ckpt, tmp_path / f"w{w}", w) for w in ("0", "1", "2")]
    assert losses[1] > losses[0]
    assert losses[2] - losses[1] == pytest.approx(losses[1] - losses[0], rel=1e-4)  # CE + w * mean((f(x) - f(Sx))^2)


def test_consistency_weight_is_saved_and_kept_on_resume(run_dec, shapes, dec_ckpt, tmp_path):
    out = tmp_path / "run"
    assert run_dec("finetune", dec_ckpt, shapes, "-o", out, "--epochs", "1", "--consistency-weight", "0.01",
                   *FAST, "--quiet").code == 0
    state = torch.load(out / "state.pt", weights_only=True)
    assert json.loads(state["options"])["consistency_weight"] == 0.01
    r = run_dec("finetune", dec_ckpt, shapes, "-o", out, "--resume", "--epochs", "2", "--json", "-", "--quiet")
    assert r.code == 0, r.err
    assert json.loads(r.out)["options"]["consistency_weight"] == 0.01 and len(_rows(out)) == 2


@pytest.mark.parametrize("value", ["-1", "nan", "x"])
def test_bad_consistency_weight_is_a_usage_error(run_dec, shapes, dec_ckpt, tmp_path, value):
    r = run_dec("finetune", dec_ckpt, shapes, "-o", tmp_path / "run", "--consistency-weight", value, *FAST)
    lines = [x for x in r.err.strip().splitlines() if x.strip()]
    assert r.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "consistency-weight" in r.err


def test_dec_from_a_warp_augmentation_checkpoint(run_dec, shapes, tmp_path):
    """Warp augmentation from scratch, retrofit its best checkpoint, then the paper's recipe on the DEC."""
    from dec_cli.backbones.checkpoint import load_model

    aug = tmp_path / "aug"
    r = run_dec("finetune", "test_resnet", shapes, "-o", aug, "--random-init", "--num-classes", str(len(CLASSES)),
                "--img-size", str(SIZE), "--epochs", "1", "--aug-prob", "0.5", *FAST, "--quiet")
    assert r.code == 0, r.err
    dec = tmp_path / "dec.safetensors"
    r = run_dec("retrofit", "test_resnet", "--weights", aug / "best.safetensors", "--img-size", str(SIZE),
                "-o", dec, "--quiet")
    assert r.code == 0, r.err
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        plain, retro = load_model(str(aug / "best.safetensors")).eval()(x), load_model(str(dec)).eval()(x)
    assert (plain - retro).abs().max() <= 1e-4  # the warp-aug weights, under an identity DEC
    run = tmp_path / "run"
    r = run_dec("finetune", dec, shapes, "-o", run, "--epochs", "2", "--dec-warmup-epochs", "1", *PAPER_LRS,
                "--consistency-weight", "0.01", "--aug-prob", "0.5", *FAST, "--json", "-", "--quiet")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["dec"] and summary["epochs_run"] == 2
    assert {k: summary["options"][k] for k in ("lr", "dec_lr", "dec_warmup_epochs", "consistency_weight")} == \
        {"lr": 1e-7, "dec_lr": 1e-2, "dec_warmup_epochs": 1, "consistency_weight": 0.01}
