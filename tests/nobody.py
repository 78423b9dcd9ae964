"""Run `dec ARGS...` as the unprivileged user nobody (65534): permission tests when the suite runs as root.

Usage: python tests/nobody.py WARMUP_JSON ARGS...   (WARMUP_JSON: a `dec` argument list, as JSON)

The interpreter and its standard library may live where nobody cannot read (pyenv
under /root), and `dec` imports lazily, so the child first runs the warm-up command
as root (output discarded) to import what the real command needs, then drops its
user and group ids for good and runs ARGS as nobody.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

from dec_cli.cli import main

NOBODY = 65534

if __name__ == "__main__":
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        with contextlib.suppress(SystemExit):
            main(json.loads(sys.argv[1]))
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    main(sys.argv[2:])
