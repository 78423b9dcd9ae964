"""Old flat import paths (``dec_cli.warp``, ``dec_cli.checkpoint``, ...) keep working for one release, with a
DeprecationWarning naming the new path; the package itself never uses them."""

from __future__ import annotations

import subprocess
import sys

from dec_cli.legacy import MOVED


def _python(code: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, timeout=300)


def test_old_paths_are_the_new_modules_with_a_warning():
    code = """
import importlib, warnings
import dec_cli.warps.warp, dec_cli.warps.apply, dec_cli.backbones.checkpoint, dec_cli.canon.retrofit
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from dec_cli.warp import Warp, apply_warp
    from dec_cli.checkpoint import load_model
    import dec_cli.retrofit
    from dec_cli.finetune import finetune, resolve_splits
assert Warp is dec_cli.warps.warp.Warp and apply_warp is dec_cli.warps.apply.apply_warp
assert load_model is dec_cli.backbones.checkpoint.load_model
assert dec_cli.retrofit.retrofit is dec_cli.canon.retrofit.retrofit
assert dec_cli.retrofit.__spec__.name == "dec_cli.canon.retrofit"
messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
assert any("dec_cli.warp moved to dec_cli.warps.warp and dec_cli.warps.apply" in m for m in messages), messages
assert any("dec_cli.checkpoint moved to dec_cli.backbones.checkpoint" in m for m in messages), messages
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr


def test_every_old_name_imports():
    names = sorted(MOVED)
    code = ("import importlib, warnings\nwarnings.simplefilter('ignore')\n"
            f"for name in {names!r}:\n    importlib.import_module('dec_cli.' + name)\n")
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr


def test_the_package_uses_no_old_path():
    """Every module imported with DeprecationWarnings as errors: an internal old path would raise."""
    code = """
import importlib, pkgutil, dec_cli
for info in pkgutil.walk_packages(dec_cli.__path__, "dec_cli."):
    if info.name != "dec_cli.__main__":
        importlib.import_module(info.name)
"""
    proc = _python(code, "-W", "error::DeprecationWarning:dec_cli.legacy")
    assert proc.returncode == 0, proc.stderr
