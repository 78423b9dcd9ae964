"""Shared fixtures: run the CLI in-process and locate the bundled sample data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from dec_cli.cli import main

DATA = Path(__file__).parent / "data"


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread for the whole run: the tensors and models here are tiny, so more
    threads only add contention on the 2-core test machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture
def sigkill_dec():
    """Run `python -m dec_cli ARGS...` in a child and SIGKILL it once ``ready()`` holds (no handler runs).

    The child uses one thread, like this process, so its arithmetic matches in-process runs.
    """

    def run(args: list, ready: Callable[[], bool], *, timeout: float = 240.0, poll: float = 0.01) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        child = subprocess.Popen([sys.executable, "-m", "dec_cli", *map(str, args)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and child.poll() is None and not ready():
                time.sleep(poll)
            assert child.poll() is None, "the child ended (or timed out) before it could be killed"
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait(timeout=60)
        assert child.returncode == -signal.SIGKILL

    return run
