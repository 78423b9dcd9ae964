"""Old import paths of the flat layout (``dec_cli.warp``, ``dec_cli.checkpoint``, ...), kept for one release.

Version 0.1 kept every module directly in ``dec_cli/``; they now live in area
subpackages (``dec_cli.warps.warp``, ``dec_cli.backbones.checkpoint``, ...).
`install` puts a finder on ``sys.meta_path`` that answers an old name with the
new module itself (so ``dec_cli.warp.Warp is dec_cli.warps.warp.Warp``) and a
``DeprecationWarning`` naming the new path. The two modules whose contents were
split answer with a module that reads from both parts.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

#: old module name (under dec_cli) -> new module(s); where two, the old module's names are in either.
MOVED: dict[str, tuple[str, ...]] = {
    **{m: (f"core.{m}",) for m in "errors display files limits config stopsignal distributed memory modelinfo".split()},
    **{m: (f"warps.{m}",) for m in "maps1d warpgrid warpinverse randomwarp scalerange zoom zoomaxis".split()},
    "warp": ("warps.warp", "warps.apply"),
    **{m: (f"canon.{m}",) for m in "canonicalizer solvers canonloss diagnostics retrofit autorecipe probe catalogue".split()},
    **{m: (f"backbones.{m}",) for m in
       "backbone weights foreign_weights checkpoint ckptheader metacheck weightsource".split()},
    **{m: (f"trees.{m}",) for m in
       "treeformat treescan images jobrecord joblock warpplan warpworkers data classmap objects boxcheck vocboxes".split()},
    **{m: (f"evaluation.{m}",) for m in
       "evaluate metrics report reportpath plot predictions modelnames failif tta ttascales evalzoom evalresiduals".split()},
    **{m: (f"training.{m}",) for m in "finetune_options trainer optimizer rundir".split()},
    **{m: (f"jobs.{m}",) for m in
       "folderwarp retrofit_job evaluate_job digits digitclasses digitsprotocol demo".split()},
    "finetune": ("jobs.finetune", "training.splits"),
    "cli_render": ("cli.render",), "helptext": ("cli.helptext",), "precheck": ("cli.precheck",),
}


class _Joined(types.ModuleType):
    """An old module whose names now live in several new modules: each attribute from the first that has it."""

    def __init__(self, name: str, parts: list[types.ModuleType]) -> None:
        super().__init__(name, parts[0].__doc__)
        self._parts = parts

    def __getattr__(self, attr: str):
        for part in self._parts:
            if hasattr(part, attr):
                return getattr(part, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")

    def __dir__(self):
        return sorted({n for part in self._parts for n in dir(part)})


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as its new module (or a `_Joined` view of several), with a DeprecationWarning."""

    def __init__(self, old: str, new: tuple[str, ...]) -> None:
        self.old, self.new = old, new

    def create_module(self, spec):
        where = " and ".join(f"dec_cli.{n}" for n in self.new)
        warnings.warn(f"dec_cli.{self.old} moved to {where}; the old path goes away in the next release",
                      DeprecationWarning, stacklevel=2)
        parts = [importlib.import_module(f"dec_cli.{n}") for n in self.new]
        if len(parts) > 1:
            return _Joined(f"dec_cli.{self.old}", parts)
        self._spec = parts[0].__spec__
        return parts[0]

    def exec_module(self, module) -> None:
        # The new module ran when it was imported; the import system has just set its __spec__
        # to the old name's, so give it back its own.
        if getattr(self, "_spec", None) is not None:
            module.__spec__ = self._spec


class _LegacyFinder(importlib.abc.MetaPathFinder):
    """Finds ``dec_cli.OLD`` for every OLD in `MOVED` (nothing else)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != "dec_cli" or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(name, MOVED[name]))


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _LegacyFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _LegacyFinder())
