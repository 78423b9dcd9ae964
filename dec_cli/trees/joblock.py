"""One job per output folder: `dec warp` and `dec unwarp` hold a lock file inside DST while they run.

The lock is `fcntl.flock` on ``DST/.dec-lock``. The kernel releases it when its holder exits or
is killed, so a lock file left by a killed job is stale by construction and the next job simply
takes it over. The file names the holder (pid, host, command, start time) for the one-line
error a second job gets; the holder removes it when it ends, also on an error or an interrupt.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from dec_cli.core.errors import UsageError

LOCK_FILE = ".dec-lock"


def _holder(fd: int) -> dict[str, Any]:
    """What the lock file says about the job that holds it ({} if unreadable)."""
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host h since 2026-01-01 10:00:00 UTC: dec warp a b``, from what is known."""
    parts = [f"pid {holder['pid']}" if "pid" in holder else "pid unknown"]
    if holder.get("host"):
        parts.append(f"on {holder['host']}")
    if isinstance(holder.get("started"), (int, float)):
        parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder["started"])))
    text = " ".join(parts)
    return f"{text}: {holder['command']}" if holder.get("command") else text


def _locked(folder: Path, path: Path) -> int:
    """Open and lock ``path``; a descriptor whose lock the caller now holds, or `UsageError` if taken."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UsageError(f"DST {folder} is in use by another dec job ({describe_holder(holder)})",
                             "wait for that job to end, or choose another DST") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed the file between our open and our lock: again


@contextlib.contextmanager
def job_lock(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the lock of ``folder`` (which must exist) for the ``with`` block; yields the lock file's path."""
    folder = Path(folder)
    path = folder / LOCK_FILE
    try:
        fd = _locked(folder, path)
    except OSError as exc:
        raise UsageError(f"cannot lock DST {folder}: {exc.strerror or exc}",
                         "check the path and its permissions") from None
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": round(time.time())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        yield path
    finally:
        # Removed while still held, so a job waiting on this file sees it gone and makes a new one.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)
