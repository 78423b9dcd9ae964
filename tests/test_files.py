"""Atomic writes: the target appears whole or not at all, with the permissions a plain open() gives."""

from __future__ import annotations

import itertools
import os
import stat

import pytest

from dec_cli.core import files
from dec_cli.core.files import atomic_file, atomic_path, write_text_atomic


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name)


@pytest.mark.parametrize("helper", ["path", "file"])
def test_success_writes_whole_file_with_umask_permissions(tmp_path, helper):
    target = tmp_path / "sub" / "out.bin"
    old_mask = os.umask(0o027)
    try:
        if helper == "path":
            with atomic_path(target) as tmp:
                assert tmp.parent == target.parent and tmp.name.startswith(".out.bin.")
                tmp.write_bytes(b"payload")
        else:
            with atomic_file(target) as f:
                f.write(b"payload")
                f.seek(0)
                assert f.read() == b"payload"  # readable too (multi-page TIFF writers read back)
    finally:
        os.umask(old_mask)
    assert target.read_bytes() == b"payload"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert _leftovers(target.parent) == []


@pytest.mark.parametrize("helper", [atomic_path, atomic_file])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path, helper, error):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(error):
        with helper(target) as handle:
            if helper is atomic_path:
                handle.write_text("half")
            else:
                handle.write(b"half")
            raise error()
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_existing_target_is_refused_without_overwrite(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(FileExistsError):
        with atomic_file(target, overwrite=False):
            pass
    assert target.read_text() == "old" and _leftovers(tmp_path) == []


def test_a_leftover_temporary_name_is_skipped_not_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_TEMP_COUNTER", itertools.count(7))
    stale = tmp_path / f".out.txt.{os.getpid()}-7.part.txt"
    stale.write_text("left by a killed run")
    write_text_atomic(tmp_path / "out.txt", "new")
    assert (tmp_path / "out.txt").read_text() == "new"
    assert stale.read_text() == "left by a killed run"  # untouched: O_EXCL made us pick the next name


def test_a_failed_rename_removes_the_temporary(tmp_path):
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a non-empty folder cannot be replaced by a file
    with pytest.raises(OSError):
        write_text_atomic(target, "text")
    assert target.is_dir() and _leftovers(tmp_path) == []


def test_stale_temporaries_are_swept_and_nothing_else(tmp_path):
    from dec_cli.core.files import remove_stale_temporaries

    keep = [".dec-warp-job.json", ".hidden.png", "cat.part.png", "a/.notes.part", "a/b.png"]
    stale = [".cat.png.123-4.part.png", "a/.x.safetensors.9-0.part.safetensors",
             "a/..last.safetensors.9-6.part.safetensors.9-7.part.safetensors", ".state.pt.abc123.part.pt"]
    for name in keep + stale:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [".cat.png.123-4.part.png", ".state.pt.abc123.part.pt"]
    assert sorted(remove_stale_temporaries(tmp_path, recursive=True)) == sorted(stale[1:3])
    assert all((tmp_path / name).exists() for name in keep)
    assert not any((tmp_path / name).exists() for name in stale)
