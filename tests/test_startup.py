"""Start-up: commands that need no model answer before torch and timm load (seconds on a CPU machine).

Asserted on what is imported, in a fresh interpreter per command, not on timings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
CKPT = Path(__file__).resolve().parents[1] / "dec_cli" / "data" / "digits-dec.safetensors"

_PROBE = """
import json, sys
from dec_cli.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 0
heavy = sorted(m for m in ("torch", "timm", "matplotlib") if m in sys.modules)
print("PROBE " + json.dumps({"code": code, "heavy": heavy}))
"""


def _probe(*args: object) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    line = [x for x in proc.stdout.splitlines() if x.startswith("PROBE ")][-1]
    return {**json.loads(line[6:]), "err": proc.stderr}


def test_importing_the_cli_imports_no_torch():
    proc = subprocess.run([sys.executable, "-c", "import sys, dec_cli.cli; "
                           "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("args", [("--help",), ("models",), ("info", CKPT), ("info", CKPT, "--json", "-"),
                                  ("evaluate", "--help"), ("finetune", "--help")])
def test_model_free_commands_load_no_torch(args):
    from dec_cli.canon.catalogue import _snapshot_names

    result = _probe(*args)
    assert result["code"] == 0, result["err"]
    # `dec models` asks timm itself when the shipped name list is of another timm version (the lowest-deps leg).
    fallback = args == ("models",) and _snapshot_names() is None
    assert result["heavy"] == (["timm", "torch"] if fallback else [])


@pytest.mark.parametrize("args", [
    ("evaluate", "--fail-if", "bogus"),
    ("evaluate", "test_resnet", "--data", DATA / "photos", "--scale-range", "3"),
    ("evaluate", "test_resnet", "--data", DATA / "photos", "--tta-scales", "a,b"),
    ("evaluate", "test_resnet", "--data", "no-such-dir"),
    ("evaluate", "test_resnet", "--data", DATA / "photos"),  # no source of weights
    ("finetune", "test_resnet", DATA / "photos", "-o", "unused-run"),  # no source of weights
    ("finetune", "test_resnet", "no-such-dir", "-o", "unused-run", "--random-init"),
    ("warp", "no-such-dir", "out"),
    ("warp", DATA / "photos", "out", "--center", "0.5,0.5"),
    ("info", "no-such.safetensors"),
    ("evaluate", "--no-such-option"),
])
def test_usage_errors_answer_before_torch_loads(args):
    result = _probe(*args)
    assert result["code"] == 2, result["err"]
    assert result["err"].startswith("error: ") and len(result["err"].strip().splitlines()) == 1
    assert result["heavy"] == []


def test_timm_name_snapshot_matches_the_installed_timm():
    """`dec models` counts covered names from a shipped list when it was taken from the installed timm
    (it must then be that timm's registry), and from timm itself for any other version."""
    import timm

    from dec_cli.canon.catalogue import _snapshot_names, recipe_catalogue, timm_names

    snapshot = _snapshot_names()
    if snapshot is not None:
        assert snapshot == timm.list_models(), "renew it: python -m dec_cli.canon.catalogue"
    assert timm_names() == timm.list_models()
    for row in recipe_catalogue()["recipes"]:
        assert row["covered_models"] == len(timm.list_models(row["patterns"])), row["name"]


def test_info_header_reader_matches_the_checkpoint_api():
    """The torch-free header reader counts the same stored values as safetensors itself."""
    from safetensors import safe_open

    from dec_cli.backbones.ckptheader import checkpoint_summary

    with safe_open(str(CKPT), framework="pt") as f:
        total = 0
        for key in f.keys():
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= d
            total += n
    assert checkpoint_summary(CKPT)["stored_values"]["total"] == total


def test_damaged_header_is_one_line_failure(run_dec, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 8 + b"{}")
    result = run_dec("info", bad)
    assert result.code == 1
    assert result.err.startswith(f"error: {bad} is not a readable safetensors file")
