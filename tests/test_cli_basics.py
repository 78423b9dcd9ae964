"""The command line's global behaviour: version, help, module entry point."""

from __future__ import annotations

import subprocess
import sys

from dec_cli.version import __version__


def test_version(run_dec):
    result = run_dec("--version")
    assert result.code == 0
    assert result.out.strip() == f"dec {__version__}"


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "dec_cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert __version__ in proc.stdout


def test_unknown_command_is_usage_error(run_dec):
    result = run_dec("no-such-command")
    assert result.code == 2


_NOISY_COMMAND = """
import warnings
from dec_cli import cli
@cli.app.command("noisy")
def noisy() -> None:
    warnings.warn("old API", FutureWarning)
    warnings.warn("older API", DeprecationWarning)
cli.main(["noisy"])
"""


def test_dependency_deprecation_notices_stay_off_stderr_unless_asked_for():
    """A dependency's deprecation notice (timm 1.0.21 emits one at import on a new torch) must not
    break the one-line stderr contract; `python -W default` still shows it."""
    quiet = subprocess.run([sys.executable, "-c", _NOISY_COMMAND], capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    loud = subprocess.run([sys.executable, "-W", "default", "-c", _NOISY_COMMAND], capture_output=True,
                          text=True, timeout=60)
    assert loud.returncode == 0 and "FutureWarning: old API" in loud.stderr, loud.stderr
