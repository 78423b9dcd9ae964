"""dec: evaluate and improve how image classifiers cope with local scale changes."""

from __future__ import annotations

from dec_cli.version import __version__

__all__ = ["__version__", "load_model", "save_model"]


def __getattr__(name: str):
    # The checkpoint API pulls in timm; import it on first use so `dec --version` stays fast.
    if name in ("load_model", "save_model"):
        from dec_cli import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'dec_cli' has no attribute {name!r}")
