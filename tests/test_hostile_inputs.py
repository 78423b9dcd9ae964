"""A second round of hostile input: crafted checkpoint metadata, class maps, boxes files, counts.

Each case is a real file (a checkpoint whose header was rewritten, a binary class map,
a boxes file for another folder) given to the real command; each must end in one
`error: ... (hint: ...)` line with the documented exit code, or be handled, and leave
nothing behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

DATA = Path(__file__).parent / "data"


def one_line(result, code: int, *needles: str) -> str:
    lines = result.err.strip().splitlines()
    assert result.code == code and len(lines) == 1, (result.code, result.err)
    assert lines[0].startswith("error: ") and "(hint: " in lines[0], lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Three class folders of real photos."""
    root = tmp_path_factory.mktemp("tree")
    for name in ("animals", "gray", "scenes"):
        shutil.copytree(DATA / "photos" / name, root / name)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from dec_cli.backbones.backbone import create_backbone
    from dec_cli.backbones.checkpoint import save_model
    from dec_cli.canon.retrofit import retrofit

    model = create_backbone("test_vit", num_classes=3)
    retrofit(model)
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "v.safetensors")


def _crafted(ckpt: Path, out: Path, change) -> Path:
    """``ckpt`` with its ``dec`` metadata rewritten by ``change`` (the tensors untouched)."""
    with safe_open(str(ckpt), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta["dec"])
    change(info)
    save_file(tensors, str(out), metadata={**meta, "dec": json.dumps(info)})
    return out


def _point(**fields):
    return lambda m: m["recipe"]["points"][0].update(fields)


def _dec(**fields):
    return lambda m: m["recipe"]["dec"].update(fields)


CRAFTED = {  # name: (change, in the error line, caught by `dec info` already)
    "num-classes-text": (lambda m: m.update(num_classes="three"), "num_classes", True),
    "num-classes-huge": (lambda m: m.update(num_classes=10 ** 12), "num_classes", True),
    "kwargs-a-list": (lambda m: m.update(model_kwargs=[1, 2]), "model_kwargs", True),
    "kwargs-huge-depth": (lambda m: m.update(model_kwargs={"depth": 10 ** 9}), "depth", True),
    "class-names-text": (lambda m: m.update(class_names="abc"), "class_names", True),
    "class-names-too-many": (lambda m: m.update(class_names=["a", "b", "c", "d"]), "4 class names", True),
    "model-name-number": (lambda m: m.update(model_name=5), "timm model", True),
    "img-size-text": (lambda m: m.update(img_size="big"), "img_size", True),
    "recipe-text": (lambda m: m.update(recipe="vit"), "recipe", True),
    "provenance-list": (lambda m: m.update(provenance=[1]), "provenance", True),
    "unknown-model": (lambda m: m.update(model_name="no_such_model_xyz"), "no_such_model_xyz", False),
    "missing-module": (_point(path="blocks.99"), "blocks.99", False),
    "lying-layout": (_point(layout="nchw"), "nchw", False),
    "negative-iters": (_dec(iters=-5), "iters", False),
    "huge-iters": (_dec(iters=10 ** 9), "iters must be at most", False),
    "huge-grid": (_dec(grid=10 ** 6), "grid must be at most", False),
    "huge-hidden": (_dec(hidden=10 ** 7), "hidden must be at most", False),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_checkpoint_metadata_is_one_error_line(case, ckpt, tree, tmp_path, run_dec):
    change, needle, in_info = CRAFTED[case]
    bad = _crafted(ckpt, tmp_path / "bad.safetensors", change)
    info = run_dec("info", bad)
    if in_info:
        one_line(info, 1, needle, "damaged")
    else:
        assert info.code == 0, info.err
    one_line(run_dec("evaluate", bad, "--data", tree, "--warps", "1", "--device", "cpu"), 1, needle)
    one_line(run_dec("finetune", bad, tree, "-o", tmp_path / "run", "--val", tree, "--device", "cpu"), 1, needle)
    assert not (tmp_path / "run").exists()


CLASS_MAPS = {  # name: (file name, bytes, in the error line)
    "binary": ("map.txt", b"\x00\xff\xfe\x80 binary", "not UTF-8"),
    "duplicate-lines": ("map.txt", b"animals\nanimals\ngray\n", "'animals' twice"),
    "duplicate-json-keys": ("map.json", b'{"animals": 0, "animals": 1, "gray": 2}', "'animals' twice"),
    "two-names-one-output": ("map.txt", b"animals 0\ngray 0\nscenes 1\n", "output 0 two names"),
    "huge-index": ("map.txt", b"animals 0\ngray 999999999\nscenes 1\n", "output index outside"),
    "too-many": ("map.txt", b"a\nb\nanimals\ngray\nscenes\n", "5 classes"),
    "too-few": ("map.txt", b"animals\ngray\n", "unknown to"),
}


@pytest.mark.parametrize("case", list(CLASS_MAPS))
def test_hostile_class_maps_are_usage_errors(case, ckpt, tree, tmp_path, run_dec):
    name, content, needle = CLASS_MAPS[case]
    (tmp_path / name).write_bytes(content)
    one_line(run_dec("evaluate", ckpt, "--data", tree, "--warps", "1", "--class-map", tmp_path / name), 2, needle)


def test_a_class_map_larger_than_any_is_refused_unread(ckpt, tree, tmp_path, run_dec):
    big = tmp_path / "map.txt"
    with open(big, "wb") as fh:
        fh.truncate(17 * 1024 * 1024)  # sparse: no time or disk spent
    one_line(run_dec("evaluate", ckpt, "--data", tree, "--class-map", big), 2, "more than any class map")


@pytest.mark.parametrize("option, value, needle", [("--batch-size", "0", "--batch-size"), ("--limit", "0", "--limit"),
                                                   ("--workers", "5000", "--workers 5000")])
def test_impossible_counts_in_evaluate_are_usage_errors_with_a_hint(option, value, needle, ckpt, tree, run_dec):
    one_line(run_dec("evaluate", ckpt, "--data", tree, option, value), 2, needle)


def test_thousands_of_workers_are_refused_in_finetune_and_warp(ckpt, tree, tmp_path, run_dec):
    one_line(run_dec("finetune", ckpt, tree, "-o", tmp_path / "run", "--val", tree, "--workers", "5000"), 2,
             "--workers 5000", "use at most")
    one_line(run_dec("warp", tree, tmp_path / "dst", "--workers", "5000"), 2, "--workers 5000")
    assert not (tmp_path / "run").exists() and not (tmp_path / "dst").exists()


ZOOM = ["--zoom", "1,1.25", "--center", "object"]


def test_boxes_for_files_src_does_not_hold_are_refused_before_any_work(tree, tmp_path, run_dec):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"elsewhere/cat.jpg": [0, 0, 10, 10]}))
    one_line(run_dec("warp", tree, tmp_path / "dst", *ZOOM, "--boxes", boxes), 2, "names none of SRC's",
             "elsewhere/cat.jpg")
    dst = tmp_path / "dst"
    assert not dst.exists() or not any(dst.iterdir())  # at most the empty folder its write test made


@pytest.mark.parametrize("box, reason", [([-5, -5, 10, 10], "not inside"), ([0, 0, 1e308, 1e308], "not inside"),
                                         ([10, 10, 5, 5], "degenerate")])
def test_negative_huge_or_inverted_boxes_list_that_image_as_bad(box, reason, tree, tmp_path, run_dec):
    rel = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.png"))[0]
    good = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.png"))[1]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({rel: box, good: [1, 1, 20, 20]}))
    r = run_dec("warp", tree, tmp_path / "dst", *ZOOM, "--boxes", boxes, "--skip-bad", "--json", "-", "-q")
    assert r.code == 0, r.err
    bad = {b["path"]: b["reason"] for b in json.loads(r.out)["bad"]}
    assert reason in bad[rel] and good not in bad


@pytest.mark.parametrize("content, needle", [('{"a.png": [NaN, 0, 1, 1]}', "not a list of 4 numbers"),
                                             ('{"images": [{"id": 1, "file_name": "a.png"}], "annotations": '
                                              '[{"image_id": 1}]}', "bbox"),
                                             ('{"images": [{"id": 1}], "annotations": []}', "file_name")])
def test_nan_boxes_and_coco_files_missing_keys_are_usage_errors(content, needle, tree, tmp_path, run_dec):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(content)
    one_line(run_dec("warp", tree, tmp_path / "dst", *ZOOM, "--boxes", boxes), 2, needle)
    assert not (tmp_path / "dst").exists()


def test_non_ascii_names_under_a_non_utf8_locale_warp_as_under_utf8(tmp_path):
    """LC_ALL=C without UTF-8 mode: names hold surrogates; the warp (keyed by name) and outputs match UTF-8's."""
    import os
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    photo = sorted((Path(__file__).parent / "data" / "photos" / "animals").iterdir())[0]
    (src / f"cheval-été{photo.suffix}").write_bytes(photo.read_bytes())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUTF8", "LANG", "LC_ALL", "LC_CTYPE")}
    runs = {"c": (["-X", "utf8=0"], {"LC_ALL": "C", "LANG": "C"}), "utf8": (["-X", "utf8=1"], {})}
    for name, (flags, extra) in runs.items():
        done = subprocess.run([sys.executable, *flags, "-m", "dec_cli", "warp", "src", f"dst-{name}", "--quiet"],
                              cwd=tmp_path, env={**env, **extra}, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    c_out, = [p for p in (tmp_path / "dst-c").iterdir() if p.suffix == photo.suffix]
    u_out, = [p for p in (tmp_path / "dst-utf8").iterdir() if p.suffix == photo.suffix]
    assert c_out.name == u_out.name == f"cheval-été{photo.suffix}"
    assert c_out.read_bytes() == u_out.read_bytes()


def test_unwritable_home_and_tmpdir_still_warp_and_evaluate_quietly(tmp_path):
    """HOME and TMPDIR on a read-only file system: outputs as usual and nothing on stderr (matplotlib's
    config-dir notice included); nothing is written outside the command's outputs."""
    import os
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "photos" / "animals" / "horse.png", src / "horse.png")
    env = {**os.environ, "HOME": "/proc/no-home", "TMPDIR": "/proc/no-tmp", "OMP_NUM_THREADS": "1"}
    env.pop("MPLCONFIGDIR", None)
    commands = [["warp", "src", "dst", "--quiet"],
                ["evaluate", "test_resnet", "--random-init", "--data", "src", "--no-labels", "--warps", "1",
                 "--img-size", "32", "--device", "cpu", "--plot", "plot.png", "--quiet"]]
    for args in commands:
        done = subprocess.run([sys.executable, "-m", "dec_cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and done.stderr == "", done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "plot.png", "src"]
