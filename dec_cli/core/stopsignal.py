"""SIGTERM handled like Ctrl-C: the same clean stop, reported as ``terminated`` with exit 143.

Schedulers and containers stop jobs with SIGTERM (SLURM before a time limit,
Kubernetes on eviction, ``docker stop``), not Ctrl-C. :func:`handling` makes
SIGTERM raise :class:`Terminated`, a ``KeyboardInterrupt``, so every clean-up
path written for Ctrl-C (temporary files removed, worker pools stopped, the
process group left, the run folder at its last commit) runs for it unchanged.
:func:`received` tells the reporter which of the two signals stopped the
command, even when a torchrun peer's exit turned up first as another error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Iterator, Optional

# The signals a command stops cleanly on, and those its worker processes leave to it.
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})

_received: dict[str, Optional[int]] = {"signum": None}


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def _on_signal(signum: int, _frame: Any) -> None:
    _received["signum"] = signum
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Inside the block, record SIGINT and SIGTERM and raise them as ``KeyboardInterrupt``s.

    Main thread only (elsewhere a no-op); a signal the parent ignores (``nohup``) stays
    ignored, and the previous handlers come back on the way out (in-process callers, tests).
    """
    _received["signum"] = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for signum, handler in before.items():
        if handler in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def received() -> Optional[int]:
    """The stop signal this process received in the last :func:`handling` block (None: none)."""
    return _received["signum"]


def exit_code(signum: int) -> int:
    """The shell convention schedulers read: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


def word(signum: int) -> str:
    """What the error line calls the stop."""
    return "terminated" if signum == signal.SIGTERM else "interrupted"


def is_secondary_rank() -> bool:
    """Whether this process is a torchrun rank other than 0 (which stays silent: rank 0 reports once)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0"
