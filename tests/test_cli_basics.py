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
