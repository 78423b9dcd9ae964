"""`dec digits`: the locally scaled digits benchmark, and the demo data built from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dec_cli.jobs import demo
from dec_cli.jobs.digits import DigitsConfig, build_digits, cell_origins, class_set, read_composites, render
from dec_cli.core.errors import DecError
from dec_cli.trees.treeformat import output_name

NPZ = demo.DATA_DIR / "mnist-8k.npz"
SMALL = ["--n-train", "60", "--n-val", "20", "--n-test", "20"]


@pytest.fixture(scope="module")
def source():
    with np.load(NPZ) as data:
        return data["images"], data["labels"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One small benchmark built through the command line (seed 3)."""
    from dec_cli.cli import main

    root = tmp_path_factory.mktemp("digits") / "bench"
    with pytest.raises(SystemExit) as exc:
        main(["digits", str(NPZ), str(root), "--seed", "3", "--quiet", *SMALL])
    assert exc.value.code == 0
    return root


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pngs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


def _ink_rows(cell: np.ndarray) -> int:
    """Height in pixels of the ink in a cell (its rows that hold any bright pixel)."""
    return int((cell > 64).any(axis=1).sum())


# --------------------------------------------------------------------------- layout and content


def test_tree_layout_and_counts(bench):
    for split, n in (("train", 60), ("val", 20), ("test", 20)):
        files = _pngs(bench / split)
        assert len(files) == n
        for f in files:
            img = Image.open(f)
            assert img.size == (64, 64) and img.mode == "L"
    assert len(_pngs(bench / "test-zoom")) == 20 * 5
    info = json.loads((bench / "digits.json").read_text())
    assert info["classes"] == ["".join(map(str, t)) for t in class_set(2, 20)]


def test_labels_match_the_digits_shown(bench, source):
    images, labels = source
    records = read_composites(bench)
    assert len(records) == 100
    for rec in records:
        assert rec["path"].split("/")[0] == rec["label"] == "".join(map(str, rec["digits"]))
        assert tuple(rec["digits"]) in class_set(2, 20)
        # The source digits really carry those labels, and the file shows exactly them at their scales.
        assert [int(labels[i]) for i in rec["sources"]] == rec["digits"]
        shown = np.asarray(Image.open(bench / rec["split"] / rec["path"]))
        expected = render([images[i] for i in rec["sources"]], rec["scales"], 32)
        np.testing.assert_array_equal(shown, expected)


def test_class_set_needs_every_digit():
    classes = class_set(2, 20)
    assert len(set(classes)) == 20
    # Knowing one position never pins the class down: both digits must be read.
    for pos in range(2):
        for value in range(10):
            assert sum(1 for c in classes if c[pos] == value) == 2
    assert len(set(class_set(3, 100))) == 100


def test_per_digit_scales_within_range_and_independent(tmp_path, run_dec):
    root = tmp_path / "b"
    result = run_dec("digits", NPZ, root, "--scale-range", "0.7,1.4", "--quiet", "--n-train", "300",
                     "--n-val", "10", "--n-test", "10")
    assert result.code == 0, result.err
    scales = np.array([rec["scales"] for rec in read_composites(root)])
    assert scales.min() >= 0.7 and scales.max() <= 1.4
    # The range is actually used, and the two digits of a composite scale independently.
    assert scales.min() < 0.75 and scales.max() > 1.3
    assert abs(np.corrcoef(scales[:, 0], scales[:, 1])[0, 1]) < 0.2
    assert np.mean(np.abs(scales[:, 0] - scales[:, 1]) > 0.05) > 0.7


def test_rendered_digit_size_follows_its_own_scale(source):
    images, _ = source
    glyphs = [images[0], images[1]]
    small_big = render(glyphs, [0.6, 1.6], 32)
    (y0, x0), (y1, x1) = cell_origins(2, 32)
    left, right = small_big[y0:y0 + 32, x0:x0 + 32], small_big[y1:y1 + 32, x1:x1 + 32]
    same = render(glyphs, [1.0, 1.0], 32)
    assert _ink_rows(left) < _ink_rows(same[y0:y0 + 32, x0:x0 + 32])
    assert _ink_rows(right) > _ink_rows(same[y1:y1 + 32, x1:x1 + 32])
    assert _ink_rows(right) > 1.8 * _ink_rows(left)


def test_zoom_sweep_manifest(bench):
    lines = [json.loads(x) for x in (bench / "test-zoom" / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 100
    tests = {p.relative_to(bench / "test").as_posix() for p in _pngs(bench / "test")}
    factors = set()
    for entry in lines:
        assert entry["kind"] == "zoom" and entry["seed"] == 3
        assert entry["src"] in tests
        assert entry["dst"] == output_name(entry["src"], zoom=entry["zoom"])
        assert (bench / "test-zoom" / entry["dst"]).is_file()
        assert entry["knots_x"] is None and entry["knots_y"] is None
        assert entry["dst"].split("/")[0] == entry["src"].split("/")[0]
        factors.add(entry["zoom"])
    assert factors == {0.6, 0.8, 1.0, 1.25, 1.6}
    assert any(e["dst"].endswith(".z1.png") for e in lines)
    # Ink grows with the zoom factor for the same composite.
    src = lines[0]["src"]
    heights = [_ink_rows(np.asarray(Image.open(bench / "test-zoom" / output_name(src, zoom=z)))) for z in (0.6, 1.0, 1.6)]
    assert heights[0] < heights[1] < heights[2]


# --------------------------------------------------------------------------- determinism and splits


def test_same_seed_same_bytes_other_seed_differs(tmp_path, bench, run_dec):
    again = tmp_path / "again"
    assert run_dec("digits", NPZ, again, "--seed", "3", "--quiet", *SMALL).code == 0
    assert _tree_bytes(again) == _tree_bytes(bench)
    other = tmp_path / "other"
    assert run_dec("digits", NPZ, other, "--seed", "4", "--quiet", *SMALL).code == 0
    assert _tree_bytes(other)["composites.jsonl"] != _tree_bytes(bench)["composites.jsonl"]


def test_splits_draw_from_disjoint_digits(tmp_path, bench):
    by_split: dict[str, set[int]] = {}
    for rec in read_composites(bench):
        by_split.setdefault(rec["split"], set()).update(rec["sources"])
    assert not by_split["train"] & by_split["val"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]
    # The source partition ignores the seed: no seed's test digits are in another seed's training set.
    other = build_digits(NPZ, tmp_path / "s9", DigitsConfig(seed=9, n_train=60, n_val=20, n_test=20)).root
    test9 = {i for rec in read_composites(other) if rec["split"] == "test" for i in rec["sources"]}
    assert not test9 & by_split["train"]


def test_test_split_alone_equals_full_build(tmp_path, bench):
    config = DigitsConfig(seed=3, n_train=60, n_val=20, n_test=20)
    alone = build_digits(NPZ, tmp_path / "t", config, splits=("test",)).root
    full, part = _tree_bytes(bench), _tree_bytes(alone)
    assert not (alone / "train").exists()
    for rel, data in part.items():
        if rel.startswith(("test/", "test-zoom/")):
            assert full[rel] == data


def test_train_scale_range_per_split(tmp_path, run_dec):
    """The wide protocol: train/ and val/ from --train-scale-range, test/ from --scale-range, test-zoom/ from --zoom."""
    args = ["--seed", "3", "--quiet", "--n-train", "200", "--n-val", "40", "--n-test", "40",
            "--scale-range", "0.4,2", "--train-scale-range", "0.8,1.25", "--zoom", "0.4,1,2"]
    root = tmp_path / "wide"
    assert run_dec("digits", NPZ, root, *args).code == 0
    records = read_composites(root)
    by_split = {s: np.array([r["scales"] for r in records if r["split"] == s]) for s in ("train", "val", "test")}
    assert by_split["train"].shape == (200, 2) and by_split["test"].shape == (40, 2)
    for split in ("train", "val"):
        assert by_split[split].min() >= 0.8 and by_split[split].max() <= 1.25
    test = by_split["test"]
    assert test.min() >= 0.4 and test.max() <= 2.0
    assert test.min() < 0.6 and test.max() > 1.5  # the test range is used beyond the training range
    lines = [json.loads(x) for x in (root / "test-zoom" / "manifest.jsonl").read_text().splitlines()]
    assert sorted({e["zoom"] for e in lines}) == [0.4, 1.0, 2.0]
    config = json.loads((root / "digits.json").read_text())["config"]
    assert config["scale_range"] == [0.4, 2.0] and config["train_scale_range"] == [0.8, 1.25]
    again = tmp_path / "again"
    assert run_dec("digits", NPZ, again, *args).code == 0
    assert _tree_bytes(again) == _tree_bytes(root)


def test_train_scale_range_leaves_defaults_and_test_split_alone(tmp_path, bench, run_dec):
    """Without the option nothing changes; with it, test/ and test-zoom/ stay those of the plain build."""
    assert "train_scale_range" not in json.loads((bench / "digits.json").read_text())["config"]
    plain = _tree_bytes(bench)
    same = tmp_path / "same"
    assert run_dec("digits", NPZ, same, "--seed", "3", "--quiet", "--train-scale-range", "0.6,1.6", *SMALL).code == 0
    # The same range given explicitly draws the same scales: every file but the settings is identical.
    assert {k: v for k, v in _tree_bytes(same).items() if k != "digits.json"} == \
        {k: v for k, v in plain.items() if k != "digits.json"}
    narrow = tmp_path / "narrow"
    assert run_dec("digits", NPZ, narrow, "--seed", "3", "--quiet", "--train-scale-range", "0.9,1.1", *SMALL).code == 0
    other = _tree_bytes(narrow)
    for rel, data in plain.items():
        if rel.startswith(("test/", "test-zoom/")):
            assert other[rel] == data, rel
    assert any(other[rel] != data for rel, data in plain.items() if rel.startswith("train/"))


def test_three_digits(tmp_path, run_dec):
    root = tmp_path / "d3"
    assert run_dec("digits", NPZ, root, "--digits", "3", "--cell", "24", "--quiet", *SMALL).code == 0
    recs = read_composites(root)
    assert all(len(r["label"]) == 3 and len(r["scales"]) == 3 for r in recs)
    assert Image.open(root / "train" / recs[0]["path"]).size == (48, 48)


# --------------------------------------------------------------------------- bad input


def _one_line_error(result, code=2):
    assert result.code == code
    lines = [x for x in result.err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err


def test_missing_source(tmp_path, run_dec):
    result = run_dec("digits", tmp_path / "nope.npz", tmp_path / "out")
    _one_line_error(result)
    assert "does not exist" in result.err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arrays, message", [
    ({"images": np.zeros((30, 28, 28), np.uint8)}, "no array labels"),
    ({"images": np.zeros((30, 28, 28), np.float32), "labels": np.arange(30) % 10}, "'images' must be uint8"),
    ({"images": np.zeros((30, 28), np.uint8), "labels": np.arange(30) % 10}, "'images' must be uint8"),
    ({"images": np.zeros((30, 28, 28), np.uint8), "labels": np.arange(29) % 10}, "'labels' must be integers"),
    ({"images": np.zeros((30, 28, 28), np.uint8), "labels": np.arange(30)}, "must lie in 0..9"),
])
def test_wrong_arrays(tmp_path, run_dec, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    result = run_dec("digits", path, tmp_path / "out")
    _one_line_error(result)
    assert message in result.err


def test_not_an_npz(tmp_path, run_dec):
    path = tmp_path / "text.npz"
    path.write_text("not a zip archive")
    result = run_dec("digits", path, tmp_path / "out")
    _one_line_error(result)
    assert "cannot read" in result.err


@pytest.mark.parametrize("args, message", [
    (["--digits", "4"], "--digits must be 2 or 3"),
    (["--scale-range", "1.2,2"], "scale range"),
    (["--train-scale-range", "1.2,2"], "--train-scale-range"),
    (["--train-scale-range", "0.8"], "--train-scale-range"),
    (["--classes", "101"], "--classes"),
    (["--n-test", "0"], "--n-test"),
    (["--zoom", "1,x"], "--zoom"),
])
def test_bad_options(tmp_path, run_dec, args, message):
    result = run_dec("digits", NPZ, tmp_path / "out", *args)
    _one_line_error(result)
    assert message in result.err


def test_existing_destination_needs_overwrite(tmp_path, run_dec):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_dec("digits", NPZ, out, "--quiet", *SMALL)
    _one_line_error(result)
    assert (out / "keep.txt").read_text() == "mine"
    # --overwrite replaces the whole folder, so only a tree `dec digits` built (it has digits.json)
    result = run_dec("digits", NPZ, out, "--quiet", "--overwrite", *SMALL)
    _one_line_error(result)
    assert "not a tree 'dec digits' built" in result.err and (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert run_dec("digits", NPZ, out, "--quiet", *SMALL).code == 0
    (out / "train" / "stray.txt").write_text("x")
    assert run_dec("digits", NPZ, out, "--quiet", "--overwrite", *SMALL).code == 0
    assert not (out / "train" / "stray.txt").exists() and (out / "test-zoom" / "manifest.jsonl").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary trees left


def test_json_summary(tmp_path, run_dec):
    result = run_dec("digits", NPZ, tmp_path / "out", "--json", "-", *SMALL)
    assert result.code == 0
    summary = json.loads(result.out)
    assert summary["counts"] == {"train": 60, "val": 20, "test": 20}
    assert summary["zoom_files"] == 100 and summary["image_size"] == 64


# --------------------------------------------------------------------------- demo data


def test_demo_data_is_built_once_and_repaired(tmp_path):
    root = demo.demo_data(tmp_path)
    n = demo.demo_test_count()
    assert len(_pngs(root / "test")) == n
    assert len(_pngs(root / "test-zoom")) == n * len(demo.DEMO_CONFIG.zoom)
    # The demo's images are the first test composites of the benchmark the bundled models were trained
    # beside: same partition, same files.
    full = [r for r in read_composites(root) if r["split"] == "test"]
    planned = build_digits(NPZ, tmp_path / "full", demo.DEMO_CONFIG, splits=("test",)).root
    assert full == [r for r in read_composites(planned)][:n]
    assert (root / "test" / full[0]["path"]).read_bytes() == (planned / "test" / full[0]["path"]).read_bytes()
    marker = root / "digits.json"
    stamp = marker.stat().st_mtime_ns
    assert demo.demo_data(tmp_path) == root and marker.stat().st_mtime_ns == stamp  # reused
    victim = _pngs(root / "test-zoom")[0]
    victim.unlink()
    assert demo.demo_data(tmp_path) == root and victim.is_file()  # incomplete: rebuilt


def test_demo_without_models_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "DEMO_MODELS", ("no-such-model.safetensors",))
    with pytest.raises(DecError, match="bundled demo models are missing"):
        demo.demo_inputs(tmp_path)


@pytest.mark.skipif(not all(p.is_file() for p in demo.demo_model_paths()), reason="bundled models not trained yet")
def test_bundled_models_match_the_demo_data():
    from dec_cli.backbones.checkpoint import load_model

    names = ["".join(map(str, t)) for t in class_set(demo.DEMO_CONFIG.digits, demo.DEMO_CONFIG.classes)]
    models = [load_model(p) for p in demo.demo_model_paths()]
    assert [m.dec_info["dec"] for m in models] == [False, True]
    for model in models:
        assert sorted(model.dec_info["class_names"]) == sorted(names)
    assert sum(p.stat().st_size for p in demo.demo_model_paths()) <= 10 * 2 ** 20


def _top1_by_model(report: dict) -> dict[str, float]:
    # --limit takes images in sorted path order: 250 of them span five classes, so a model that
    # always answers one class cannot pass.
    return {m["name"]: m["metrics"]["top1"] for m in report["models"]}


@pytest.mark.skipif(not all(p.is_file() for p in demo.demo_model_paths()), reason="bundled models not trained yet")
def test_bundled_models_read_the_demo_data(tmp_path, monkeypatch, run_dec):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    models, root = demo.demo_inputs()
    result = run_dec("evaluate", *models, "--data", root / "test-zoom", "--limit", "250",
                     "--quiet", "--json", "-")
    assert result.code == 0, result.err
    top1 = _top1_by_model(json.loads(result.out))
    assert len(top1) == 2 and min(top1.values()) >= 0.9, top1


def test_demo_without_arguments(tmp_path, monkeypatch, run_dec):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    result = run_dec("evaluate", "--limit", "250", "--quiet", "--json", "-")
    assert result.code == 0, result.err
    top1 = _top1_by_model(json.loads(result.out))
    assert len(top1) == 2 and min(top1.values()) >= 0.9, top1


def test_demo_data_falls_back_to_a_temporary_folder(tmp_path, monkeypatch):
    import tempfile

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    root = demo.demo_data()
    assert root.is_relative_to(tmp_path / "tmp") and (root / "test-zoom" / "manifest.jsonl").is_file()
