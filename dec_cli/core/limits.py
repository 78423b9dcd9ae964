"""Upper bounds on counts a user types, checked before any work.

A ``--workers`` in the thousands would start that many processes (or DataLoader
workers) and stall the machine before failing; the bound leaves room for
oversubscription but not for a typo.
"""

from __future__ import annotations

import os

from dec_cli.core.errors import UsageError


def max_workers() -> int:
    """The most worker processes a command starts: 4 per CPU, at least 64."""
    return max(64, 4 * (os.cpu_count() or 1))


def check_workers(workers: int, option: str = "--workers") -> None:
    """A usage error for a negative worker count or one above :func:`max_workers`."""
    if workers < 0:
        raise UsageError(f"{option} must be 0 or more; got {workers}", f"for example {option} 4")
    limit = max_workers()
    if workers > limit:
        raise UsageError(f"{option} {workers} is more worker processes than this machine can run "
                         f"({os.cpu_count() or 1} CPUs)", f"use at most {option} {limit}")
