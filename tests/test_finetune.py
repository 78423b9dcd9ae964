"""`dec finetune`: a tiny model on a tiny locally scaled shapes task, resume, bad input, NaN, full disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

CLASSES = ["cross", "disc", "square"]
SIZE = 32


# --------------------------------------------------------------------------- synthetic data


def _draw(kind: str, rng: np.random.Generator) -> Image.Image:
    """One 32x32 RGB image: a shape of random size (its own local scale) on a noisy background,
    plus a small distractor dot elsewhere at another scale."""
    noise = rng.integers(90, 140, size=(SIZE, SIZE, 3), dtype=np.uint8)
    img = Image.fromarray(noise, "RGB")
    d = ImageDraw.Draw(img)
    r = float(rng.uniform(4.0, 10.0))
    cx, cy = (float(v) for v in rng.uniform(r + 1, SIZE - r - 1, size=2))
    colour = tuple(int(v) for v in rng.integers(200, 256, size=3))
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "disc":
        d.ellipse(box, fill=colour)
    elif kind == "square":
        d.rectangle(box, fill=colour)
    else:
        w = max(1.5, r / 3)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    dot = float(rng.uniform(1.0, 2.5))
    px, py = (float(v) for v in rng.uniform(2, SIZE - 2, size=2))
    d.ellipse((px - dot, py - dot, px + dot, py + dot), fill=(20, 20, 20))
    return img


def make_shapes(root: Path, *, n_train: int = 6, n_val: int = 3, seed: int = 0,
                classes: list[str] = CLASSES) -> Path:
    """An ImageFolder tree root/{train,val}/CLASS/*.png of shapes at random local scales."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for kind in classes:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _draw(kind, rng).save(folder / f"{kind}{i:03d}.png")
    return root


def make_dec_checkpoint(path: Path, classes: list[str] = CLASSES) -> Path:
    """A DEC-retrofitted tiny ViT (32x32 inputs, 4x4 patch tokens) saved with class names."""
    from dec_cli.backbones.backbone import create_backbone
    from dec_cli.backbones.checkpoint import save_model
    from dec_cli.canon.retrofit import retrofit

    torch.manual_seed(0)
    model = create_backbone("test_vit", num_classes=len(classes), img_size=SIZE, patch_size=8)
    retrofit(model)
    model.dec_info["class_names"] = list(classes)
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def dec_ckpt(tmp_path_factory) -> Path:
    return make_dec_checkpoint(tmp_path_factory.mktemp("ckpt") / "dec_vit.safetensors")


FAST = ["--batch-size", "6", "--seed", "0", "--workers", "0", "--device", "cpu"]
EPOCHS = 6
TRAIN = ["--epochs", str(EPOCHS), "--lr", "5e-4", "--dec-lr", "1e-3", "--warmup-epochs", "1", "--aug-prob", "0.5",
         "--eq-weight", "0.2"]


def _rows(out: Path) -> list[dict]:
    import csv

    with open(out / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _without_speed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "images_per_s"} for row in rows]


@pytest.fixture(scope="module")
def full_run(shapes, dec_ckpt, tmp_path_factory):
    """One uninterrupted run through the CLI, shared by several tests (read-only)."""
    from dec_cli.cli import main

    out = tmp_path_factory.mktemp("full") / "run"
    json_path = out.parent / "summary.json"
    try:
        main(["finetune", str(dec_ckpt), str(shapes), "-o", str(out), *TRAIN, *FAST, "--json", str(json_path)])
    except SystemExit as exc:
        assert exc.code == 0
    return out, json.loads(json_path.read_text())


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- training works


def test_loss_falls_and_outputs_are_readable(full_run, shapes, dec_ckpt, run_dec):
    from dec_cli.backbones.checkpoint import load_model

    out, summary = full_run
    rows = _rows(out)
    assert [int(x["epoch"]) for x in rows] == list(range(1, EPOCHS + 1))
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_consistency",
                             "lr_backbone", "lr_dec", "images_per_s"]
    losses = [float(x["train_loss"]) for x in rows]
    # the loss falls, below that of a uniform guess over 3 classes: the model learned something
    assert losses[-1] < losses[0] * 0.9 and losses[-1] < np.log(3), losses
    assert max(float(x["train_acc"]) for x in rows[-3:]) > 0.45
    assert 0 <= float(rows[-1]["val_consistency"]) <= 1
    assert float(rows[0]["lr_dec"]) > float(rows[0]["lr_backbone"]) > 0
    assert summary["dec"] is True and summary["final"]["epoch"] == EPOCHS and summary["epochs_run"] == EPOCHS
    assert summary["train_images"] == 18 and summary["val_images"] == 9
    best = max(range(1, EPOCHS + 1), key=lambda e: (float(rows[e - 1]["val_acc"]), -e))
    assert summary["best_epoch"] == best
    assert sorted(p.name for p in out.iterdir()) == ["best.safetensors", "last.safetensors", "metrics.csv",
                                                      "state.pt"]
    model = load_model(str(out / "last.safetensors"))
    assert model.dec_info["dec"] and model.dec_info["class_names"] == CLASSES
    prov = model.dec_info["provenance"]
    assert prov["epochs"] == EPOCHS and prov["seed"] == 0 and prov["epoch"] == EPOCHS
    assert prov["data"] == str(shapes.resolve())
    assert prov["command"].startswith(f"dec finetune {dec_ckpt} {shapes} -o {out} --epochs {EPOCHS} ")
    assert "--lr 0.0005" in prov["command"] and "--eq-weight 0.2" in prov["command"]
    assert load_model(str(out / "best.safetensors")).dec_info["provenance"]["epoch"] == best
    # the saved weights are the trained ones, not the starting ones
    start, last = load_file(str(dec_ckpt)), load_file(str(out / "last.safetensors"))
    assert any(not torch.equal(start[k], last[k]) for k in start)
    # dec info reads the result
    r = run_dec("info", out / "last.safetensors")
    assert r.code == 0, r.err


def test_plain_timm_name_new_head_and_config_file(run_dec, shapes, tmp_path):
    """A timm name fine-tunes without DEC (the baselines); --config sets options, the command line wins."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    (data / "train" / "disc" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cfg = tmp_path / "ft.yaml"
    cfg.write_text("epochs: 1\nbatch-size: 4\naug_prob: 1.0\nscale-range: 0.8,1.25\nlr: 1e-3\nimg-size: 24\n")
    out = tmp_path / "base"
    r = run_dec("finetune", "test_resnet", "--random-init", data / "train", "--val", data / "val", "-o", out, "--config", cfg,
                "--num-classes", "3",
                "--batch-size", "19", "--seed", "1", "--json", "-", "--quiet")
    assert r.code == 0, r.err
    s = json.loads(r.out)
    # an unreadable image is skipped and reported, not fatal
    assert [b["path"] for b in s["bad_files"]] == ["train/disc/broken.png"]
    assert s["dec"] is False and s["new_head"] is True
    assert s["options"]["batch_size"] == 19 and s["options"]["aug_prob"] == 1.0 and s["options"]["lr"] == 1e-3
    assert s["options"]["scale_range"] == [0.8, 1.25] and s["options"]["img_size"] == 24
    assert len(_rows(out)) == 1


def test_dec_warmup_and_freeze_backbone_train_only_the_dec(run_dec, shapes, dec_ckpt, tmp_path):
    from dec_cli.backbones.checkpoint import load_model
    from dec_cli.canon.retrofit import dec_modules

    model = load_model(str(dec_ckpt))
    dec_keys = {f"{name}.{k}" for name, mod in model.named_modules() if mod in dec_modules(model)
                for k in mod.state_dict()}
    start = load_file(str(dec_ckpt))
    for flag in (["--dec-warmup-epochs", "1"], ["--freeze-backbone"]):
        out = tmp_path / flag[0].strip("-")
        r = run_dec("finetune", dec_ckpt, shapes, "-o", out, "--epochs", "1", "--dec-lr", "1e-2", *flag, *FAST,
                    "--quiet")
        assert r.code == 0, r.err
        after = load_file(str(out / "last.safetensors"))
        assert dec_keys and all(k in after for k in dec_keys)
        assert all(torch.equal(start[k], after[k]) for k in start if k not in dec_keys), flag
        assert any(not torch.equal(start[k], after[k]) for k in dec_keys), flag
        assert float(_rows(out)[0]["lr_backbone"]) == 0.0 and float(_rows(out)[0]["lr_dec"]) > 0


def test_frozen_backbone_keeps_its_batch_norm_statistics(run_dec, shapes, tmp_path):
    from dec_cli.backbones.backbone import create_backbone
    from dec_cli.backbones.checkpoint import save_model
    from dec_cli.canon.retrofit import retrofit

    torch.manual_seed(0)
    model = create_backbone("test_resnet", num_classes=len(CLASSES))
    retrofit(model)
    model.dec_info["class_names"] = list(CLASSES)
    ckpt = save_model(model, tmp_path / "dec_resnet.safetensors")
    start = load_file(str(ckpt))
    backbone = [k for k in start if "dec" not in k.split(".")]
    assert any(k.endswith("running_mean") for k in backbone)  # the backbone has batch norm
    for flag in (["--freeze-backbone"], ["--dec-warmup-epochs", "1"]):
        out = tmp_path / flag[0].strip("-")
        r = run_dec("finetune", ckpt, shapes, "-o", out, "--epochs", "1", "--img-size", str(SIZE), *flag, *FAST,
                    "--quiet")
        assert r.code == 0, r.err
        after = load_file(str(out / "last.safetensors"))
        assert [k for k in backbone if not torch.equal(start[k], after[k])] == [], flag


# --------------------------------------------------------------------------- resume


def _interrupt_at(epoch: int):
    """An event hook that sends this process a real SIGINT at the first step of ``epoch``."""

    def hook(kind: str, ev: dict) -> None:
        if kind == "step" and ev["epoch"] == epoch and ev["step"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    return hook


def test_resume_after_interrupt_equals_uninterrupted_run(run_dec, full_run, shapes, dec_ckpt, tmp_path):
    from dec_cli.jobs.finetune import finetune

    full, _ = full_run
    cut = tmp_path / "cut"
    options = {"epochs": EPOCHS, "lr": 5e-4, "dec_lr": 1e-3, "warmup_epochs": 1, "aug_prob": 0.5, "eq_weight": 0.2,
               "batch_size": 6, "seed": 0, "workers": 0, "device": "cpu"}
    with pytest.raises(KeyboardInterrupt):
        finetune(str(dec_ckpt), shapes, cut, options, on_event=_interrupt_at(2))
    assert len(_rows(cut)) == 1
    # without --resume the folder is not overwritten
    r = run_dec("finetune", dec_ckpt, shapes, "-o", cut, *TRAIN, *FAST)
    assert r.code == 2 and "--resume" in r.err
    # --resume alone restores the saved options and continues from epoch 2
    r = run_dec("finetune", dec_ckpt, shapes, "-o", cut, "--resume", "--quiet", "--json", "-")
    assert r.code == 0, r.err
    s = json.loads(r.out)
    assert s["resumed_from_epoch"] == 1 and s["epochs_run"] == EPOCHS - 1
    a, b = load_file(str(full / "last.safetensors")), load_file(str(cut / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _without_speed(_rows(full)) == _without_speed(_rows(cut))
    # resuming with another model is refused
    r = run_dec("finetune", "test_resnet", shapes, "-o", cut, "--resume", "--num-classes", "3")
    assert r.code == 2 and "another model" in r.err and len(r.err.strip().splitlines()) == 1
    # a finished run resumes to "nothing to do"
    r = run_dec("finetune", dec_ckpt, shapes, "-o", cut, "--resume")
    assert r.code == 0 and "nothing to do" in r.out


def test_resume_after_sigkill_equals_uninterrupted_run(run_dec, sigkill_dec, full_run, shapes, dec_ckpt, tmp_path):
    """A hard kill (no handler runs) mid-training: --resume still ends where an uninterrupted run ends."""
    full, _ = full_run
    cut = tmp_path / "killed"
    sigkill_dec(["finetune", dec_ckpt, shapes, "-o", cut, *TRAIN, *FAST, "--quiet"],
                lambda: (cut / "metrics.csv").exists() and len(_rows(cut)) >= 2, poll=0.02)
    done = len(_rows(cut))
    assert 2 <= done < EPOCHS
    r = run_dec("finetune", dec_ckpt, shapes, "-o", cut, "--resume", "--quiet", "--json", "-")
    assert r.code == 0, r.err
    assert json.loads(r.out)["resumed_from_epoch"] >= done - 1  # the kill may land between the row and the state
    a, b = load_file(str(full / "last.safetensors")), load_file(str(cut / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _without_speed(_rows(full)) == _without_speed(_rows(cut))
    assert not list(cut.glob(".*.part*"))  # a temporary file cut short by the kill is cleaned up or replaced


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                 (signal.SIGTERM, 143, "terminated")], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_in_epoch_one_of_three_stops_with_one_line(shapes, dec_ckpt, tmp_path, run_dec,
                                                                    signum, code, word):
    """A real SIGINT or SIGTERM to a real `dec finetune` during its first epoch: exit 130 or 143, one line
    naming --resume, and the run folder resumes (from epoch 0, with the options it was started with)."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore::FutureWarning"}  # old timm warns about torch.jit at import
    child = subprocess.Popen([sys.executable, "-m", "dec_cli", "finetune", str(dec_ckpt), str(shapes), "-o", str(out),
                              "--epochs", "3", *FAST], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().startswith("fine-tuning ")  # printed as epoch 1 begins
        child.send_signal(signum)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=60)
    assert not (out / "metrics.csv").exists() or _rows(out) == []
    assert child.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {word} (hint: ") and "--resume" in lines[0], lines
    r = run_dec("finetune", dec_ckpt, shapes, "-o", out, "--resume", "--quiet", "--json", "-")
    assert r.code == 0, r.err
    s = json.loads(r.out)
    assert s["resumed_from_epoch"] == 0 and s["epochs_run"] == 3 and s["options"]["batch_size"] == 6


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_are_one_line_usage_errors(run_dec, shapes, dec_ckpt, tmp_path):
    def check(r, *needles):
        assert r.code == 2, (r.code, r.err)
        lines = [ln for ln in r.err.strip().splitlines() if ln]
        assert len(lines) == 1 and lines[0].startswith("error: "), r.err
        for n in needles:
            assert n in lines[0], lines[0]

    # empty validation split (class folders, no images)
    empty = make_shapes(tmp_path / "empty", n_train=1, n_val=0)
    check(run_dec("finetune", dec_ckpt, empty, "-o", tmp_path / "o1"), "no images")
    # no val/ at all
    nov = tmp_path / "noval"
    make_shapes(nov, n_train=1, n_val=1)
    import shutil
    shutil.rmtree(nov / "val")
    check(run_dec("finetune", dec_ckpt, nov, "-o", tmp_path / "o2"), "val")
    check(run_dec("finetune", dec_ckpt, nov / "train", "--val", nov / "nothing", "-o", tmp_path / "o2"), "nothing")
    # train and val classes differ
    diff = make_shapes(tmp_path / "diff", n_train=1, n_val=1)
    (diff / "val" / "square").rename(diff / "val" / "triangle")
    check(run_dec("finetune", dec_ckpt, diff, "-o", tmp_path / "o3"), "only in val: triangle")
    # data classes differ from the checkpoint's, and the hint names --num-classes
    other = make_shapes(tmp_path / "other", n_train=1, n_val=1, classes=["a", "b", "c"])
    check(run_dec("finetune", dec_ckpt, other, "-o", tmp_path / "o4"), "differ", "--num-classes 3")
    check(run_dec("finetune", "test_resnet", "--random-init", other, "-o", tmp_path / "o5"), "1000 outputs", "--num-classes 3")
    check(run_dec("finetune", dec_ckpt, other, "-o", tmp_path / "o6", "--num-classes", "4"), "--num-classes 4")
    # option values and config files
    check(run_dec("finetune", dec_ckpt, shapes, "-o", tmp_path / "o7", "--aug-prob", "2"), "--aug-prob")
    check(run_dec("finetune", dec_ckpt, shapes, "-o", tmp_path / "o8", "--scale-range", "1.2,1.5"), "scale")
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("epochz: 3\n")
    check(run_dec("finetune", dec_ckpt, shapes, "-o", tmp_path / "o9", "--config", bad_cfg), "epochz")
    check(run_dec("finetune", "test_resnet", "--random-init", shapes, "-o", tmp_path / "o10", "--num-classes", "3",
                  "--dec-warmup-epochs", "1"), "DEC")
    # nothing was written by any of these
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 11))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(run_dec, full_run, shapes, dec_ckpt, tmp_path):
    out = _copy_run(full_run[0], tmp_path / "nan")
    good = (out / "last.safetensors").read_bytes()
    state = (out / "state.pt").read_bytes()
    r = run_dec("finetune", dec_ckpt, shapes, "-o", out, "--resume", "--epochs", str(EPOCHS + 1), "--lr", "1e12",
                "--dec-lr", "1e12", "--clip-grad", "0", "--quiet")
    assert r.code == 1, (r.code, r.err)
    line = r.err.strip()
    assert line.startswith("error: the loss became NaN") and f"epoch {EPOCHS + 1}" in line, line
    assert f"last.safetensors (epoch {EPOCHS}) is kept" in line and "--lr" in line and len(line.splitlines()) == 1
    assert (out / "last.safetensors").read_bytes() == good
    assert (out / "state.pt").read_bytes() == state
    assert len(_rows(out)) == EPOCHS


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics")
def test_full_disk_leaves_no_corrupt_checkpoint(run_dec, full_run, shapes, dec_ckpt, tmp_path):
    import resource

    out = _copy_run(full_run[0], tmp_path / "disk")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # As on a full disk, no file may grow past 64 KiB (the soft limit; raised again right after):
    # metrics.csv fits, the checkpoint does not. Writes past the limit fail with EFBIG.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        r = run_dec("finetune", dec_ckpt, shapes, "-o", out, "--resume", "--epochs", str(EPOCHS + 1), "--quiet")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert r.code == 1, r.err
    line = r.err.strip()
    assert line.startswith(f"error: could not write {out / 'last.safetensors'}"), line
    assert "--resume" in line and len(line.splitlines()) == 1
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(after) == sorted(before)  # no temporary file left behind
    for name in ("last.safetensors", "best.safetensors", "state.pt"):
        assert after[name] == before[name]
    # the run then continues from its last completed epoch (and clears what a killed writer left behind)
    (out / ".last.safetensors.abc123.part.safetensors").write_bytes(b"half a checkpoint")
    r = run_dec("finetune", dec_ckpt, shapes, "-o", out, "--resume", "--epochs", str(EPOCHS + 1), "--quiet",
                "--json", "-")
    assert r.code == 0, r.err
    assert json.loads(r.out)["resumed_from_epoch"] == EPOCHS
    assert [int(x["epoch"]) for x in _rows(out)] == list(range(1, EPOCHS + 2))
    assert sorted(p.name for p in out.iterdir()) == sorted(before)
