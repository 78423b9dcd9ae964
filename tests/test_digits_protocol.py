"""`dec digits --protocol`: the paper's locally scaled digits, explicit options winning, defaults untouched."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from dec_cli.jobs import demo
from dec_cli.jobs.digitclasses import class_set
from dec_cli.jobs.digits import read_composites
from dec_cli.jobs.digitsprotocol import PAPER_CLASSES

NPZ = demo.DATA_DIR / "mnist-8k.npz"
SMALL = ["--n-train", "60", "--n-val", "20", "--n-test", "20"]
#: sha256 of digits.json and composites.jsonl of `dec digits NPZ DST --quiet SMALL` before protocols existed.
DEFAULT_BUILD = {"digits.json": "ec26d797cac9c96693fedcf58c8a2c7003ff6402a9335452c3750fa4e9443035",
                 "composites.jsonl": "59eaf8faced2c62ca65d95c453e04ac98b8854d1c68e0d4b4319ccff74d255a2"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line_error(result) -> None:
    assert result.code == 2
    lines = [x for x in result.err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.err, result.err


def test_paper_protocol_tree(tmp_path, run_dec):
    """3 digits, 200 classes in every split, every digit's scale drawn from 0.4-2 in train, val and test."""
    root = tmp_path / "paper"
    counts = ["--n-train", "400", "--n-val", "200", "--n-test", "200"]  # explicit sizes win; the rest is the protocol's
    assert run_dec("digits", NPZ, root, "--protocol", "paper", "--quiet", *counts).code == 0
    info = json.loads((root / "digits.json").read_text())
    config = info["config"]
    assert config["protocol"] == "paper" and config["digits"] == 3 and config["classes"] == PAPER_CLASSES == 200
    assert config["scale_range"] == [0.4, 2.0] and "train_scale_range" not in config
    assert config["zoom"] == [0.4, 0.6, 0.8, 1.0, 1.25, 1.6, 2.0]
    assert info["image_size"] == 64 and info["counts"] == {"train": 400, "val": 200, "test": 200}
    recs = read_composites(root)
    for split in ("train", "val", "test"):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(info["classes"])  # every class, every split
        scales = [s for r in recs if r["split"] == split for s in r["scales"]]
        assert all(len(r["digits"]) == 3 for r in recs if r["split"] == split)
        assert 0.4 <= min(scales) < 0.5 and 1.8 < max(scales) <= 2.0, split  # the whole range, not wide's 0.8-1.25
    assert len(list((root / "test-zoom").rglob("*.png"))) == 200 * 7


def test_paper_class_set_is_balanced():
    classes = class_set(3, PAPER_CLASSES)
    assert len(set(classes)) == PAPER_CLASSES
    for position in range(3):
        assert set(Counter(c[position] for c in classes).values()) == {PAPER_CLASSES // 10}
    every = class_set(3, 1000)
    assert len(set(every)) == 1000  # all three-digit numbers
    assert every[:100] == class_set(3, 100)  # the first hundred classes are those of earlier versions


def test_explicit_options_override_the_protocol(tmp_path, run_dec):
    root = tmp_path / "mine"
    assert run_dec("digits", NPZ, root, "--protocol", "paper", "--classes", "30", "--scale-range", "0.5,1.5",
                   "--zoom", "1,2", "--quiet", *SMALL).code == 0
    config = json.loads((root / "digits.json").read_text())["config"]
    assert (config["classes"], config["scale_range"], config["zoom"], config["digits"]) == (30, [0.5, 1.5], [1.0, 2.0], 3)
    wide = tmp_path / "wide"
    assert run_dec("digits", NPZ, wide, "--protocol", "wide", "--train-scale-range", "0.9,1.1", "--quiet", *SMALL).code == 0
    config = json.loads((wide / "digits.json").read_text())["config"]
    assert config["protocol"] == "wide" and config["train_scale_range"] == [0.9, 1.1]
    assert config["scale_range"] == [0.4, 2.0] and config["digits"] == 2 and config["classes"] == 20


def test_default_build_is_unchanged(tmp_path, run_dec):
    plain, named = tmp_path / "plain", tmp_path / "named"
    assert run_dec("digits", NPZ, plain, "--quiet", *SMALL).code == 0
    assert run_dec("digits", NPZ, named, "--quiet", "--protocol", "default", *SMALL).code == 0
    assert {name: _sha(plain / name) for name in DEFAULT_BUILD} == DEFAULT_BUILD
    assert _tree_bytes(plain) == _tree_bytes(named)
    assert "protocol" not in json.loads((plain / "digits.json").read_text())["config"]


@pytest.mark.parametrize("args, message", [
    (["--protocol", "papr"], "--protocol must be one of default, wide, paper"),
    (["--protocol", "paper", "--digits", "2"], "--classes must be between 2 and 100 with --digits 2; got 200"),
    (["--protocol", "paper", "--classes", "1001"], "--classes must be between 2 and 1000"),
    (["--protocol", "paper", "--scale-range", "2,1"], "--scale-range"),
    (["--protocol", "wide", "--n-val", "0"], "--n-val must be at least 1"),
])
def test_bad_protocol_values(tmp_path, run_dec, args, message):
    result = run_dec("digits", NPZ, tmp_path / "out", *args)
    _one_line_error(result)
    assert message in result.err
    assert not (tmp_path / "out").exists()
