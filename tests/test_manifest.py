"""Hostile and careless manifests: `dec unwarp` and `dec evaluate` judge every record (dec_cli.trees.treeformat).

Paths that leave their root (``..``, absolute, through a symlink), knots that do not make a valid
warp, and lines that are not records are listed as bad with their line number; the valid records
are still restored. Real photographs, real `dec warp` outputs, real symlinks.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from dec_cli.warps.randomwarp import keyed_warp
from dec_cli.warps.scalerange import SCALE_LIMITS
from dec_cli.trees.treeformat import (check_warp, is_image_path, mask_name, output_name, read_manifest, write_manifest,
                                zoom_source_name)
from dec_cli.warps.zoom import zoom_warp

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def warped(tmp_path_factory) -> tuple[Path, dict]:
    """A real `dec warp` tree of two photographs; returns it and its first manifest record."""
    from dec_cli.cli import main

    base = tmp_path_factory.mktemp("warped")
    src = base / "src"
    src.mkdir()
    shutil.copy(DATA / "photos/animals/chelsea.png", src / "cat.png")
    shutil.copy(DATA / "photos/scenes/coffee.png", src / "coffee.png")
    try:
        main(["warp", str(src), str(base / "w"), "-q", "--seed", "3"])
    except SystemExit as exc:
        assert exc.code == 0
    lines = (base / "w" / "manifest.jsonl").read_text().splitlines()
    return base / "w", json.loads(lines[0])


def tree_with(tmp_path: Path, warped: tuple[Path, dict], lines: list) -> Path:
    """A copy of the warped tree whose manifest holds ``lines`` (dicts become JSON; bytes stay bytes)."""
    tree = tmp_path / "tree"
    shutil.copytree(warped[0], tree)
    raw = b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)
    (tree / "manifest.jsonl").write_bytes(raw)
    return tree


def with_(record: dict, **changes) -> dict:
    out = copy.deepcopy(record)
    out.update(changes)
    return out


def unwarp(run_dec, tree: Path, dst: Path, *args: str):
    result = run_dec("unwarp", tree, dst, "--json", "-", "-q", *args)
    summary = json.loads(result.out) if result.out.strip() else None
    return result, summary


def bad_lines(summary: dict) -> dict[int, str]:
    return {int(b["path"].rsplit(":", 1)[1]): b["reason"] for b in summary["bad"]}


# --------------------------------------------------------------------------- paths stay inside their roots


def test_unwarp_never_writes_or_reads_outside_its_trees(run_dec, warped, tmp_path):
    good = warped[1]
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "a.png"
    shutil.copy(warped[0] / good["dst"], victim)  # a real image: the old reader restored it over itself
    precious = victim.read_bytes()
    dst = tmp_path / "restored"
    dst.mkdir()
    (dst / "escape").symlink_to(outside, target_is_directory=True)  # a link planted in DST
    tree = tree_with(tmp_path, warped, [
        with_(good, dst="../outside/a.png"),
        with_(good, dst=str(victim)),
        with_(good, dst="escape/a.png"),
        with_(good, dst="peek/cat.png"),
        good,
    ])
    (tree / "peek").symlink_to(warped[0], target_is_directory=True)  # a link in SRC to another tree
    result, summary = unwarp(run_dec, tree, dst, "--overwrite")
    assert result.code == 1
    assert victim.read_bytes() == precious and sorted(p.name for p in outside.iterdir()) == ["a.png"]
    assert (dst / good["dst"]).is_file() and summary["written"] == 1
    reasons = bad_lines(summary)
    assert sorted(reasons) == [1, 2, 3, 4]
    assert "not a relative path inside the tree" in reasons[1] and "not a relative path" in reasons[2]
    assert "leads outside" in reasons[3] and "leads outside" in reasons[4]
    assert "manifest.jsonl:1" in result.err and "could not be restored" in result.err


def test_unwarp_rejects_bad_mask_and_source_paths(run_dec, warped, tmp_path):
    good = warped[1]
    tree = tree_with(tmp_path, warped, [with_(good, mask="../../etc/passwd"), with_(good, src="/etc/passwd",
                                                                                     dst="coffee.png"), good])
    result, summary = unwarp(run_dec, tree, tmp_path / "out")
    assert result.code == 1 and summary["written"] == 1
    reasons = bad_lines(summary)
    assert "'mask'" in reasons[1] and "'src'" in reasons[2]


# --------------------------------------------------------------------------- knots


def _knots(record: dict, row: list[float]) -> dict:
    grid = len(row) - 1
    return with_(record, grid=grid, rows=1, knots_x=[row], knots_y=[row])


BAD_KNOTS = {
    "reversed": ([1.0, 0.75, 0.5, 0.25, 0.0], "rows must start at 0 and end at 1"),
    "nan": ([0.0, float("nan"), 0.5, 0.75, 1.0], "not a finite number"),
    "inf": ([0.0, float("inf"), 0.5, 0.75, 1.0], "not a finite number"),
    "out of range": ([0.0, -0.5, 0.5, 1.5, 1.0], "not strictly increasing"),
    "beyond one": ([0.0, 0.5, 1.2, 1.5, 2.0], "rows must start at 0 and end at 1"),
    "constant": ([0.0, 0.0, 0.0, 0.0, 1.0], "not strictly increasing"),
    "too steep": ([0.0, 0.001, 0.002, 0.003, 1.0], "local scale factors"),
}


def test_unwarp_lists_every_invalid_warp_and_restores_the_rest(run_dec, warped, tmp_path):
    good = warped[1]
    bad = [_knots(with_(good, dst=f"bad{i}.png"), row) for i, (row, _) in enumerate(BAD_KNOTS.values())]
    shapes = [
        with_(good, dst="rows.png", rows=2),  # says 2 rows, holds 1
        with_(good, dst="grid.png", grid=3),  # says grid 3, holds 9 knots
        with_(good, dst="ragged.png", knots_y=[good["knots_y"][0][:-1]]),
        with_(good, dst="flat.png", knots_x=good["knots_x"][0]),  # a row, not rows of knots
        with_(good, dst="null.png", knots_x=None),
        with_(good, dst="text.png", knots_x=[["0"] * (good["grid"] + 1)]),
        with_(good, dst="huge.png", knots_x=[[0] + [10 ** 400] * good["grid"]]),
    ]
    tree = tree_with(tmp_path, warped, [*bad, *shapes, good])
    for i in range(len(bad)):
        shutil.copy(tree / good["dst"], tree / f"bad{i}.png")
    result, summary = unwarp(run_dec, tree, tmp_path / "out")
    assert result.code == 1
    assert summary["written"] == 1 and (tmp_path / "out" / good["dst"]).is_file()
    assert not any((tmp_path / "out" / f"bad{i}.png").exists() for i in range(len(bad)))
    reasons = bad_lines(summary)
    assert sorted(reasons) == list(range(1, len(bad) + len(shapes) + 1))
    for line, (name, (_, why)) in enumerate(BAD_KNOTS.items(), 1):
        assert why in reasons[line], name
    for line in range(len(bad) + 1, len(bad) + 5):
        assert "rows x (grid + 1)" in reasons[line]
    assert "knots are null" in reasons[len(bad) + 5]
    assert "not a finite number" in reasons[len(bad) + 6] and "not a finite number" in reasons[len(bad) + 7]


def test_folding_warp_is_rejected(warped):
    """Every row increasing with factors in range, but the rows so far apart that the 2-D map folds."""
    fast, slow = [0.0, 0.94, 0.96, 0.98, 1.0], [0.0, 0.02, 0.04, 0.06, 1.0]  # factors 0.08 .. 3.76
    record = with_(warped[1], grid=4, rows=2, knots_x=[fast, slow], knots_y=[fast, slow])
    assert "folds" in check_warp(record)
    assert check_warp(with_(record, knots_y=[slow, fast])) is None


@pytest.mark.parametrize("size", [(64, 64), (60, 200), (300, 90)])
def test_every_warp_dec_warp_makes_passes_the_checks(size):
    """No false alarms: random warps at the widest accepted range, and zooms at the tested extremes."""
    for seed in range(5):
        for rows in (1, 3):
            w = keyed_warp(seed, "x", grid=8, rows=rows, scale_range=SCALE_LIMITS)
            record = {"grid": 8, "rows": rows, "knots_x": w.knots_x[0].tolist(), "knots_y": w.knots_y[0].tolist()}
            assert check_warp(record) is None, (seed, rows)
    for z in (0.5, 0.8, 1.0, 1.25, 1.8):
        w = zoom_warp(z, radius=0.25, size=size, grid=64, rows=17)
        record = {"grid": 64, "rows": 17, "knots_x": w.knots_x[0].tolist(), "knots_y": w.knots_y[0].tolist()}
        assert check_warp(record) is None, z


def test_dec_warp_refuses_zooms_whose_warp_unwarp_would_reject(run_dec, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(DATA / "photos/animals/chelsea.png", src / "cat.png")
    for zooms, radius in (("1.97", "0.25"), ("0.02", "0.1"), ("1,30", "0.01"), ("0.5", "0.49"), ("0.8", "0.5")):
        result = run_dec("warp", src, tmp_path / "out", "--zoom", zooms, "--radius", radius)
        assert result.code == 2 and "[0.05, 20]" in result.err and result.err.count("\n") == 1, (zooms, radius, result.err)
    assert not (tmp_path / "out").exists()
    assert run_dec("warp", src, tmp_path / "ok", "-q", "--zoom", "0.5,1.8", "--radius", "0.25").code == 0
    result = run_dec("unwarp", tmp_path / "ok", tmp_path / "back", "-q")
    assert result.code == 0, result.err


# --------------------------------------------------------------------------- malformed lines


def test_malformed_records_are_listed_and_the_valid_ones_restored(run_dec, warped, tmp_path):
    good = warped[1]
    cases = [  # (line, what its reason says); None: a blank line, skipped
        (with_(good, dst=None), "no 'dst' path"),
        (with_(good, dst=17), "not a path: 17"),
        (b'{"dst": "caf\xe9.png"}', "not UTF-8 text"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"", None),
        (with_(good, kind="spiral"), "'kind'"),
        (with_(good, kind="zoom", zoom=-1), "'zoom'"),
        (with_(good, kind="zoom", zoom=10 ** 400), "'zoom'"),
        (with_(good, kind="zoom", zoom=1.2, center=[0.5, 2]), "'center'"),
        (with_(good, kind="zoom", zoom=1.2, radius=0), "'radius'"),
        (good, "valid"),
        (good, "also on line 12"),  # the same dst twice
    ]
    tree = tree_with(tmp_path, warped, [line for line, _ in cases])
    result, summary = unwarp(run_dec, tree, tmp_path / "out")
    assert result.code == 1 and summary["written"] == 1
    assert summary["files"] == len(cases) - 1 and summary["outputs"] == 1
    reasons = bad_lines(summary)
    expected = {n: why for n, (_, why) in enumerate(cases, 1) if why not in (None, "valid")}
    assert sorted(reasons) == sorted(expected)
    for n, why in expected.items():
        assert why in reasons[n], (n, reasons[n])
    assert "Error" not in result.err  # no raw TypeError / UnicodeDecodeError
    result, _ = unwarp(run_dec, tree, tmp_path / "again", "--skip-bad")
    assert result.code == 0


@pytest.mark.parametrize("content", [b"", b"\n\n", b"{not json\n", b"\xff\xfe\n", b'{"dst": null}\n'])
def test_manifest_without_a_valid_record_is_a_usage_error(run_dec, warped, tmp_path, content):
    tree = tree_with(tmp_path, warped, [])
    (tree / "manifest.jsonl").write_bytes(content)
    result = run_dec("unwarp", tree, tmp_path / "out")
    assert result.code == 2
    assert result.err.startswith("error: manifest ") and "no valid record" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_manifest_that_is_not_a_file_is_a_usage_error(run_dec, warped, tmp_path):
    result = run_dec("unwarp", warped[0], tmp_path / "out", "--manifest", tmp_path)
    assert result.code == 2 and "not a regular file" in result.err


# --------------------------------------------------------------------------- dec evaluate


def test_evaluate_refuses_a_zoom_manifest_with_bad_records(tmp_path):
    """evaluate's zoom groups come from the manifest: a bad record stops it with one line (exit 2)."""
    from dec_cli.trees.data import scan_image_folder
    from dec_cli.core.errors import UsageError

    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    shutil.copy(DATA / "photos/animals/chelsea.png", root / "cat" / "a.z1.png")
    record = {"src": "cat/a.png", "dst": "cat/a.z1.png", "kind": "zoom", "zoom": 1.0}
    for bad, why in ((with_(record, dst="../../etc/passwd"), "'dst'"),
                     (with_(record, src="/etc/passwd"), "'src'"),
                     (with_(record, zoom=float("nan")), "'zoom'")):
        (root / "manifest.jsonl").write_text(json.dumps(record) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(UsageError) as err:
            scan_image_folder(root)
        assert "manifest.jsonl:2" in err.value.message and why in err.value.message
    (root / "manifest.jsonl").write_text(json.dumps(record) + "\n")
    data = scan_image_folder(root)
    assert data.zoom_sweep and data.samples[0].zoom == 1.0


def test_read_manifest_keeps_file_order_and_skips_blank_lines(warped, tmp_path):
    tree = tree_with(tmp_path, warped, [warped[1], b"   ", with_(warped[1], dst="coffee.png")])
    found = read_manifest(tree / "manifest.jsonl", roots=(tree,), warps=True)
    assert [r["dst"] for r in found.records] == [warped[1]["dst"], "coffee.png"] and found.bad == []


# --------------------------------------------------------------------------- names and writing


def test_tree_names_round_trip():
    """Output names, the source a zoom output came from, mask names and image extensions: one convention."""
    assert output_name("cls/cat.png", zoom=1.25) == "cls/cat.z1.25.png"
    assert output_name("cls/cat.png", zoom=1.0000001) == "cls/cat.z1.png"  # 6 significant digits
    assert output_name("cls/cat.jpg", copy=2) == "cls/cat.w2.jpg" and output_name("cat.png") == "cat.png"
    for rel in ("cls/cat.png", "a.b/x.y.tif", "37/00012.png"):
        for z in (0.5, 1, 1.25, 2e-2):
            assert zoom_source_name(output_name(rel, zoom=z)) == rel
    assert mask_name("cls/cat.z0.8.jpg", "cls/cat.png") == "masks/cls/cat.z0.8.png"
    assert mask_name("cat.png", None) is None
    assert is_image_path("a/B.JPEG") and is_image_path(Path("x.tiff")) and not is_image_path("notes.txt")


def test_write_manifest_lines(tmp_path):
    records = [{"src": "a.png", "dst": "a.z1.png", "kind": "zoom", "zoom": 1.0}, {"src": "b.png", "dst": "b.png"}]
    write_manifest(tmp_path / "c.jsonl", records)
    write_manifest(tmp_path / "s.jsonl", records, compact=False)
    compact, spaced = (tmp_path / "c.jsonl").read_text(), (tmp_path / "s.jsonl").read_text()
    assert compact.splitlines()[1] == '{"src":"b.png","dst":"b.png"}'
    assert spaced.splitlines()[1] == '{"src": "b.png", "dst": "b.png"}'
    assert [json.loads(line) for line in compact.splitlines()] == records == \
        [json.loads(line) for line in spaced.splitlines()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "s.jsonl"]  # no temporaries left
