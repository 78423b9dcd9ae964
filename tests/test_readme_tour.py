"""The README cannot rot: its tour runs as written, its examples are the tour's, its links resolve.

The five-minute tour (between `<!-- tour:start -->` and `<!-- tour:end -->`) runs with `bash -e` in an
empty folder, with `dec` and `python` on PATH meaning this interpreter and this checkout, as a newcomer
runs it after `pip install -e ".[test]"`. The Python API example (between the `api` markers) runs the
same way. Every `$ dec ...` line of the Commands section must be a step of the tour, so the outputs
shown there come from commands the test runs. Relative links and `#anchors` in README.md and docs/
must point at files and headings that exist, so moving a section cannot leave a dead link.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))


def _block(marker: str) -> str:
    """The fenced code between a marker pair of the README, without the fence lines."""
    text = README.read_text(encoding="utf-8")
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    assert text.count(start) == 1 and text.count(end) == 1, f"README needs one {start} ... {end} pair"
    inner = text.split(start, 1)[1].split(end, 1)[0].strip().splitlines()
    assert inner[0].startswith("```") and inner[-1] == "```", f"the {marker} block is one fenced block"
    return "\n".join(inner[1:-1]) + "\n"


def _commands(script: str) -> list[str]:
    """Shell commands of a script: comments dropped, backslash continuations joined, spaces collapsed."""
    joined = re.sub(r"\\\n\s*", " ", script)
    lines = (line.strip() for line in joined.splitlines())
    return [" ".join(line.split()) for line in lines if line and not line.startswith("#")]


def _env(tmp_path: Path) -> dict[str, str]:
    """PATH with `dec` and `python` shims for this interpreter; this checkout first on PYTHONPATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, args in (("dec", "-m dec_cli"), ("python", "")):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" {args} "$@"\n')
        shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
               OMP_NUM_THREADS="1")
    env.pop("DEC_DEBUG", None)
    return env


def test_tour_runs_as_written_in_an_empty_folder(tmp_path):
    work = tmp_path / "tour"
    work.mkdir()
    script = tmp_path / "tour.sh"
    script.write_text(_block("tour"))
    done = subprocess.run(["bash", "-e", "-o", "pipefail", str(script)], cwd=work, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for path in ("digits/digits.json", "digits/test-zoom/manifest.jsonl", "warped/manifest.jsonl",
                 "zoomed/manifest.jsonl", "dec.safetensors", "run/best.safetensors", "run/metrics.csv",
                 "zoom.md"):
        assert (work / path).is_file(), path
    assert len(list((work / "restored").rglob("*.png"))) == len(list((work / "warped").rglob("*.png"))) == 80
    report = json.loads((work / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["tuned", "init"]
    assert "backbone" in done.stdout and "retrofit recipes" in done.stdout


def test_command_examples_are_tour_steps():
    """Each command has a section with an example, and every example is a command the tour runs."""
    from typer.main import get_command

    from dec_cli.cli.app import app

    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    tour = _commands(_block("tour"))
    names = sorted(get_command(app).commands)
    assert sorted(re.findall(r"^### dec (\w+)$", section, flags=re.M)) == names
    for name in names:
        body = section.split(f"### dec {name}\n", 1)[1].split("\n### ", 1)[0]
        examples = re.findall(r"^\$ (dec (?:[^\n]*\\\n)*[^\n]*)", body, flags=re.M)
        assert examples, f"dec {name} has no `$ dec ...` example"
        for example in _commands("\n".join(examples)):
            assert example in tour, f"README example is not a tour step: {example}"


def test_python_api_example_runs(tmp_path):
    script = tmp_path / "api.py"
    script.write_text(_block("api"))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert float(lines[0].rsplit(":", 1)[1]) <= 1e-4
    assert lines[1] == "DEC / backbone parameters: 1466 / 374628"
    assert lines[2] == "test_resnet ['layer2'] True"
    assert (tmp_path / "api.safetensors").is_file()


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file (lower case, punctuation dropped, spaces as hyphens)."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    heads = re.findall(r"^#{1,6} (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        assert dest.exists(), f"{page.name}: link to a missing file: {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: link to a missing heading: {target}"
