"""dec: evaluate and improve how image classifiers cope with local scale changes.

The package is sorted into areas, one subpackage each (imports run one way: `cli` -> `jobs` ->
the areas -> `core`): `warps`, `canon` (the DEC), `backbones`, `trees`, `evaluation`,
`training`, `jobs` and `cli`; docs/design.md maps every module. The old flat module paths
(``dec_cli.warp``, ...) still import, with a DeprecationWarning (`dec_cli.legacy`).
"""

from __future__ import annotations

from dec_cli import legacy as _legacy
from dec_cli.version import __version__

_legacy.install()

__all__ = ["__version__", "load_model", "save_model"]


def __getattr__(name: str):
    # The checkpoint API pulls in timm; import it on first use so `dec --version` stays fast.
    if name in ("load_model", "save_model"):
        from dec_cli.backbones import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'dec_cli' has no attribute {name!r}")
