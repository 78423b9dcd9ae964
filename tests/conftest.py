"""Shared fixtures: run the CLI in-process and locate the bundled sample data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from dec_cli.cli import main

DATA = Path(__file__).parent / "data"


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def run_dec(capsys):
    """Run `dec ARGS...` in this process; returns exit code, stdout and stderr."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
