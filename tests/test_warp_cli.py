"""`dec warp` / `dec unwarp` on real photographs: formats and modes kept, manifest, workers,
resume, bad input, masks, zoom sweeps, and the warp-unwarp round trip."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dec_cli.jobs.folderwarp import run_warp
from dec_cli.trees.images import decode_png16
from dec_cli.trees.warpplan import WarpSettings

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).parent.parent / "examples" / "photos"


@pytest.fixture
def tree(tmp_path) -> Path:
    """A source tree of real photographs in every mode we keep."""
    src = tmp_path / "src"
    shutil.copytree(DATA / "photos", src)
    shutil.copytree(DATA / "modes", src / "modes")
    return src


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def manifest(dst: Path) -> list[dict]:
    return [json.loads(line) for line in (dst / "manifest.jsonl").read_text().splitlines()]


def psnr_interior(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    h, w = a.shape[:2]
    bh, bw = max(1, round(0.02 * h)), max(1, round(0.02 * w))
    a = a[bh:h - bh, bw:w - bw].astype(np.float64)
    b = b[bh:h - bh, bw:w - bw].astype(np.float64)
    return float(10 * np.log10(peak ** 2 / np.mean((a - b) ** 2)))


# --------------------------------------------------------------------------- what comes out


def test_warp_keeps_tree_format_size_mode_depth_pages(run_dec, tree, tmp_path):
    dst = tmp_path / "dst"
    result = run_dec("warp", tree, dst, "--quiet")
    assert result.code == 0, result.err
    src_files = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    out_files = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()
                       if p.name != "manifest.jsonl" and not p.name.startswith("."))
    assert out_files == src_files
    for rel in src_files:
        a, b = Image.open(tree / rel), Image.open(dst / rel)
        assert b.format == a.format, rel
        assert b.mode == a.mode, rel
        assert getattr(b, "n_frames", 1) == getattr(a, "n_frames", 1), rel
        if rel != "modes/rotated.jpg":
            assert b.size == a.size, rel
    # EXIF orientation is applied before warping: the output is upright, without the tag
    rotated = Image.open(dst / "modes/rotated.jpg")
    assert rotated.size == (96, 64) and rotated.getexif().get(0x0112) in (None, 1)
    # 16-bit stays 16-bit (values above 255 survive), alpha is kept, palette is kept
    g16 = np.asarray(Image.open(dst / "modes/gray16.png"))
    assert g16.dtype == np.uint16 and g16.max() > 1000
    rgb16 = decode_png16((dst / "modes/rgb16.png").read_bytes())
    assert rgb16.shape == (64, 96, 3) and (rgb16 % 257 != 0).mean() > 0.5  # low bytes carry data
    assert not np.array_equal(rgb16, decode_png16((tree / "modes/rgb16.png").read_bytes()))
    assert np.asarray(Image.open(dst / "animals/horse.png"))[..., 3].min() < 255
    pal_in, pal_out = Image.open(tree / "modes/palette.png"), Image.open(dst / "modes/palette.png")
    assert pal_out.getpalette() == pal_in.getpalette()
    # a random warp changes the pixels
    assert not np.array_equal(np.asarray(Image.open(dst / "animals/chelsea.png")),
                              np.asarray(Image.open(tree / "animals/chelsea.png")))


def test_manifest_records_invertible_warps_within_strength(run_dec, tree, tmp_path):
    dst = tmp_path / "dst"
    assert run_dec("warp", tree, dst, "-q", "--seed", "3", "--scale-range", "0.8,1.25", "--grid", "6",
                   "--rows", "2", "--copies", "2").code == 0
    records = manifest(dst)
    assert len(records) == 2 * len([p for p in tree.rglob("*") if p.is_file()])
    first = records[0]
    assert first["src"] == "animals/chelsea.png" and first["dst"] == "animals/chelsea.w0.png"
    assert records[1]["dst"] == "animals/chelsea.w1.png" and records[1]["copy"] == 1
    for r in records:
        assert r["kind"] == "random" and r["zoom"] is None and r["seed"] == 3 and r["scale_range"] == [0.8, 1.25]
        kx, ky = np.array(r["knots_x"]), np.array(r["knots_y"])
        assert kx.shape == ky.shape == (2, 7) and r["grid"] == 6 and r["rows"] == 2
        slopes = np.diff(np.concatenate([kx, ky]), axis=-1) * 6
        assert slopes.min() >= 0.8 - 1e-5 and slopes.max() <= 1.25 + 1e-5
        assert (dst / r["dst"]).is_file()


def test_zoom_sweep_names_and_identity_factor(run_dec, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(DATA / "photos/animals/chelsea.png", src / "cat.png")
    dst = tmp_path / "dst"
    assert run_dec("warp", src, dst, "-q", "--zoom", "0.8,1,1.25", "--radius", "0.3").code == 0
    assert sorted(p.name for p in dst.glob("*.png")) == ["cat.z0.8.png", "cat.z1.25.png", "cat.z1.png"]
    same = np.asarray(Image.open(dst / "cat.z1.png"))
    assert np.array_equal(same, np.asarray(Image.open(src / "cat.png")))
    rec = {r["dst"]: r for r in manifest(dst)}
    assert rec["cat.z1.25.png"]["kind"] == "zoom" and rec["cat.z1.25.png"]["zoom"] == 1.25
    assert rec["cat.z1.25.png"]["radius"] == 0.3 and rec["cat.z1.25.png"]["center"] == [0.5, 0.5]
    assert rec["cat.z1.25.png"]["scale_range"] is None


def test_masks_are_warped_with_nearest_sampling(run_dec, tmp_path):
    src, masks, dst = tmp_path / "src", tmp_path / "masks", tmp_path / "dst"
    (src / "animals").mkdir(parents=True)
    (masks / "animals").mkdir(parents=True)
    photo = Image.open(DATA / "photos/animals/chelsea.png")
    photo.save(src / "animals/chelsea.png")
    # a real label mask: three brightness classes of the photo
    labels = np.digitize(np.asarray(photo.convert("L")), [85, 170]).astype(np.uint8) * 100
    Image.fromarray(labels).save(masks / "animals/chelsea.png")
    assert run_dec("warp", src, dst, "-q", "--masks", masks).code == 0
    out = np.asarray(Image.open(dst / "masks/animals/chelsea.png"))
    assert out.shape == labels.shape and set(np.unique(out)) <= {0, 100, 200}
    assert not np.array_equal(out, labels)
    assert manifest(dst)[0]["mask"] == "masks/animals/chelsea.png"


def test_png16_decoder_matches_pillow_on_its_filtered_rows():
    # Pillow writes 16-bit gray PNGs with Sub, Up and Paeth rows; it decodes them at full depth
    path = DATA / "modes/gray16.png"
    assert np.array_equal(decode_png16(path.read_bytes())[..., 0], np.asarray(Image.open(path)))
    # and Pillow's own 8-bit reading of our 16-bit colour file is its high byte
    ours = decode_png16((DATA / "modes/rgb16.png").read_bytes())
    assert np.array_equal(np.asarray(Image.open(DATA / "modes/rgb16.png")), (ours >> 8).astype(np.uint8))


# --------------------------------------------------------------------------- determinism and resume


def test_workers_give_byte_identical_outputs(run_dec, tree, tmp_path):
    assert run_dec("warp", tree, tmp_path / "one", "-q", "--copies", "2").code == 0
    assert run_dec("warp", tree, tmp_path / "two", "-q", "--copies", "2", "--workers", "2").code == 0
    a, b = files_of(tmp_path / "one"), files_of(tmp_path / "two")
    assert a.keys() == b.keys() and a == b


def test_a_files_warp_depends_only_on_seed_path_and_copy(run_dec, tree, tmp_path):
    assert run_dec("warp", tree, tmp_path / "all", "-q").code == 0
    part = tmp_path / "part"
    (part / "animals").mkdir(parents=True)
    shutil.copy(tree / "animals/chelsea.png", part / "animals/chelsea.png")
    assert run_dec("warp", part, tmp_path / "one", "-q").code == 0
    assert (tmp_path / "one/animals/chelsea.png").read_bytes() == (tmp_path / "all/animals/chelsea.png").read_bytes()


def test_resume_after_interrupt_matches_an_uninterrupted_run(run_dec, tree, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run_dec("warp", tree, full, "-q", "--copies", "2").code == 0
    done = []

    def interrupt(k):
        done.append(k)
        if len(done) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_warp(tree, cut, WarpSettings(copies=2), on_progress=interrupt)
    assert not (cut / "manifest.jsonl").exists()
    partial = [p for p in cut.rglob("*.png") if p.is_file()]
    assert 0 < len(partial) < 2 * 10
    # without --resume (or --overwrite) nothing is touched: a one-line usage error
    result = run_dec("warp", tree, cut, "-q", "--copies", "2")
    assert result.code == 2 and "--resume" in result.err and len(result.err.strip().splitlines()) == 1
    # resuming with other settings is refused
    assert run_dec("warp", tree, cut, "-q", "--resume", "--copies", "3").code == 2
    result = run_dec("warp", tree, cut, "-q", "--copies", "2", "--resume", "--json", "-")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["skipped_existing"] == len(partial) and summary["written"] == summary["outputs"] - len(partial)
    assert files_of(cut) == files_of(full)


def test_resume_after_sigkill_matches_an_uninterrupted_run(run_dec, sigkill_dec, tree, tmp_path):
    """A hard kill runs no cleanup: --resume must still finish to the same bytes, temporaries swept."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    options = ["-q", "--copies", "6"]
    assert run_dec("warp", tree, full, *options).code == 0
    total = sum(1 for p in full.rglob("*") if p.is_file() and p.name != "manifest.jsonl"
                and not p.name.startswith("."))
    sigkill_dec(["warp", tree, cut, *options], lambda: cut.is_dir() and sum(1 for _ in cut.rglob("*.w*.*")) >= 4,
                timeout=120, poll=0.002)
    assert not (cut / "manifest.jsonl").exists()
    # what a kill in the middle of a write leaves behind, whether or not this kill did
    (cut / "animals" / ".cat.w0.png.999-1.part.png").parent.mkdir(parents=True, exist_ok=True)
    (cut / "animals" / ".cat.w0.png.999-1.part.png").write_bytes(b"half an image")
    result = run_dec("warp", tree, cut, *options, "--resume", "--json", "-")
    assert result.code == 0, result.err
    assert 0 < json.loads(result.out)["skipped_existing"] < total
    assert files_of(cut) == files_of(full)


def test_a_failed_write_stops_with_one_line_and_resume_finishes(run_dec, tree, tmp_path):
    """A write the OS refuses (here a file-size limit: EFBIG, as real as a full disk's ENOSPC)
    stops the run with one line and exit code 1; what was written stays, and --resume finishes."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run_dec("warp", tree, full, "-q").code == 0
    outputs = [p for p in full.rglob("*") if p.is_file() and p.name != "manifest.jsonl" and not p.name.startswith(".")]
    limit = max(p.stat().st_size for p in outputs) - 1  # only the largest output cannot be written

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "dec_cli", "warp", str(tree), str(cut), "-q"], env=env,
                          preexec_fn=limit_file_size, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write ") and "(hint: " in lines[0], lines
    left = {p.relative_to(cut).as_posix() for p in cut.rglob("*") if p.is_file()}
    assert not any(".part" in name for name in left)  # the refused temporary is removed
    written = {name for name in left if not name.rsplit("/", 1)[-1].startswith(".")}
    assert 0 < len(written) < len(outputs)
    assert all((cut / name).read_bytes() == (full / name).read_bytes() for name in written)
    result = run_dec("warp", tree, cut, "-q", "--resume")
    assert result.code == 0, result.err
    assert files_of(cut) == files_of(full)


def test_overwrite_replaces_and_readme_command_reruns(run_dec, tmp_path):
    dst = tmp_path / "dec-warped"
    assert run_dec("warp", EXAMPLES, dst).code == 0
    again = run_dec("warp", EXAMPLES, dst)
    assert again.code == 2
    assert again.err.startswith("error: ") and "--overwrite" in again.err
    assert run_dec("warp", EXAMPLES, dst, "--overwrite", "-q").code == 0


# --------------------------------------------------------------------------- bad input


def test_bad_images_are_listed_and_the_rest_written(run_dec, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(DATA / "photos/animals", src / "animals")
    shutil.copytree(DATA / "bad", src / "bad")
    dst = tmp_path / "dst"
    result = run_dec("warp", src, dst, "--json", tmp_path / "s.json")
    assert result.code == 1
    out = result.out + result.err
    assert "bad/truncated.png" in out and "bad/garbage.jpg" in out and "--skip-bad" in result.err
    summary = json.loads((tmp_path / "s.json").read_text())
    bad = {b["path"]: b["reason"] for b in summary["bad"]}
    assert set(bad) == {"bad/truncated.png", "bad/garbage.jpg"} and all(bad.values())
    assert (dst / "animals/chelsea.png").is_file() and (dst / "animals/horse.png").is_file()
    assert not (dst / "bad/notes.txt").exists() and not (dst / "bad/truncated.png").exists()
    assert [r["src"] for r in manifest(dst)] == ["animals/chelsea.png", "animals/horse.png"]
    assert run_dec("warp", src, tmp_path / "dst2", "-q", "--skip-bad").code == 0


def test_decompression_bombs_are_refused(run_dec, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(DATA / "photos/animals/chelsea.png", src / "big.png")
    result = run_dec("warp", src, tmp_path / "dst", "--json", "-")
    assert result.code == 1
    assert "decompression bomb" in json.loads(result.out)["bad"][0]["reason"]


@pytest.mark.parametrize("case", ["inside", "same", "missing", "empty", "unwritable", "file"])
def test_path_errors_are_one_line_exit_2(run_dec, tree, tmp_path, case):
    src, dst = tree, tmp_path / "dst"
    if case == "inside":
        dst = tree / "out"
    elif case == "same":
        dst = tree
    elif case == "missing":
        src = tmp_path / "nope"
    elif case == "empty":
        src = tmp_path / "empty"
        src.mkdir()
        (src / "readme.txt").write_text("no images here")
    elif case == "unwritable":
        (tmp_path / "blocker").write_text("a file where a folder should be")
        dst = tmp_path / "blocker" / "dst"
    elif case == "file":
        src = tree / "animals/chelsea.png"
    result = run_dec("warp", src, dst)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert not (tree / "out").exists()


def test_bad_options_are_usage_errors(run_dec, tree, tmp_path):
    for args in (["--scale-range", "1.2,1.5"], ["--zoom", "a,b"], ["--zoom", "1.1", "--center", "0.5"],
                 ["--overwrite", "--resume"], ["--zoom", "1.9", "--radius", "0.3"], ["--center", "0.5,0.5"]):
        result = run_dec("warp", tree, tmp_path / "dst", *args)
        assert result.code == 2, args
        assert result.err.strip().startswith("error: "), args


def test_help_has_examples(run_dec):
    for cmd in ("warp", "unwarp"):
        result = run_dec(cmd, "--help")
        assert result.code == 0 and "Example: dec " + cmd in result.out


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("rows", [1, 2])
def test_unwarp_round_trip_psnr_on_photographs(run_dec, tmp_path, rows):
    src = tmp_path / "src"
    for rel in ("animals/chelsea.png", "scenes/coffee.png", "scenes/rocket.jpg", "gray/camera.png"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / "photos" / rel, src / rel)
    for name in ("cat.png", "astronaut.png"):
        shutil.copy(EXAMPLES / name, src / name)
    warped, back = tmp_path / "warped", tmp_path / "back"
    assert run_dec("warp", src, warped, "-q", "--rows", str(rows), "--seed", "1").code == 0
    result = run_dec("unwarp", warped, back, "--manifest", warped / "manifest.jsonl", "--json", "-")
    assert result.code == 0, result.err
    assert json.loads(result.out)["written"] == 6
    for r in manifest(warped):
        a = np.asarray(Image.open(src / r["src"]).convert("RGB"))
        b = np.asarray(Image.open(back / r["dst"]).convert("RGB"))
        warped_only = np.asarray(Image.open(warped / r["dst"]).convert("RGB"))
        assert psnr_interior(a, b) >= 30.0, r["src"]
        assert psnr_interior(a, b) > psnr_interior(a, warped_only) + 3, r["src"]


def test_unwarp_bad_manifest_and_missing_files(run_dec, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(DATA / "photos/animals/chelsea.png", src / "cat.png")
    warped = tmp_path / "warped"
    assert run_dec("warp", src, warped, "-q").code == 0
    assert run_dec("unwarp", warped, tmp_path / "x", "--manifest", tmp_path / "none.jsonl").code == 2
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    result = run_dec("unwarp", warped, tmp_path / "y", "--manifest", tmp_path / "broken.jsonl")
    assert result.code == 2 and "line 1" in result.err
    (warped / "cat.png").unlink()
    result = run_dec("unwarp", warped, tmp_path / "z", "-q")
    assert result.code == 1 and "cat.png" in result.err


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB",
                                  "HSV", "I", "F", "I;16", "I;16B"])
def test_every_kept_mode_survives_an_identity_warp_exactly(mode):
    from dec_cli.trees.images import warp_page

    photo = Image.open(DATA / "photos/animals/chelsea.png").convert("RGB")
    if mode == "P":
        page = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    elif mode == "PA":
        page = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).convert("PA")
    elif mode.startswith("I;16"):
        values = np.asarray(photo.convert("L")).astype(np.uint16) * 257
        page = Image.frombytes(mode, photo.size, values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    else:
        page = photo.convert(mode)
    out = warp_page(page, lambda x, sampling: x.contiguous())
    assert out.mode == page.mode and out.size == page.size
    assert np.array_equal(np.asarray(out), np.asarray(page))
    if mode in ("P", "PA"):
        assert out.getpalette() == page.getpalette()


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_tensor_to_page_rounds_half_up_and_clips(mode):
    from dec_cli.trees.images import tensor_to_page

    like = Image.new(mode, (5, 1))
    bands = len(like.getbands())
    row = torch.tensor([-3.0, 0.49, 0.5, 254.5, 300.0]).expand(1, bands, 1, 5).clone()
    before = row.clone()
    out = np.asarray(tensor_to_page(row, like)).reshape(5, bands)
    assert (out == np.array([0, 0, 1, 255, 255])[:, None]).all()
    assert torch.equal(row, before)  # the caller's tensor is left as it was
    inside = torch.tensor([0.0, 0.49, 0.5, 127.5, 255.0]).expand(1, bands, 1, 5)
    out = np.asarray(tensor_to_page(inside, like, in_range=True)).reshape(5, bands)
    assert (out == np.array([0, 0, 1, 128, 255])[:, None]).all()
