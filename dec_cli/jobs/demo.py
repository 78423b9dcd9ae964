"""The bundled demo behind `dec evaluate` with no arguments: two small digit models and their test data.

The models (a warp-augmented baseline and its DEC-retrofitted twin, trained
by ``bench/train_demo.sh``) ship in ``dec_cli/data``. Their test split and
its zoom sweep are rebuilt on first use from the embedded MNIST digits into
a cache folder, deterministically, so they are the very images the models
were never trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from dec_cli.jobs.digits import INFO_FILE, ZOOM_DIR, DigitsConfig, build_digits, config_json
from dec_cli.core.errors import DecError

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
BUNDLED_NPZ = DATA_DIR / "mnist-8k.npz"
#: The bundled models, in the order the demo reports them.
DEMO_MODELS = ("digits-baseline.safetensors", "digits-dec.safetensors")
#: The benchmark settings the bundled models were trained with (``bench/train_demo.sh``).
DEMO_CONFIG = DigitsConfig()
#: The demo evaluates the first 200 test composites (1,000 zoom-sweep images per model), so that
#: two models finish well within a minute on two CPU cores.
DEMO_TEST_LIMIT = 200


def demo_model_paths() -> list[Path]:
    """Paths of the bundled model files (they may not exist in a fresh checkout)."""
    return [DATA_DIR / name for name in DEMO_MODELS]


def demo_inputs(cache_dir: str | os.PathLike | None = None) -> tuple[list[Path], Path]:
    """The bundled model files and the demo data root (``ROOT/test`` and ``ROOT/test-zoom``).

    Builds the data on first use (about a second) into ``cache_dir`` or the
    user cache (``$XDG_CACHE_HOME/dec`` or ``~/.cache/dec``; a temporary
    folder if that is not writable), and rebuilds it if it is incomplete.
    """
    models = demo_model_paths()
    missing = [p.name for p in models if not p.is_file()]
    if missing:
        raise DecError(f"the bundled demo models are missing ({', '.join(missing)} in {DATA_DIR})",
                       "run bench/train_demo.sh to train them, or pass MODEL... and --data DIR")
    if not BUNDLED_NPZ.is_file():
        raise DecError(f"the embedded digits {BUNDLED_NPZ} are missing", "reinstall the package")
    return models, demo_data(cache_dir)


def demo_data(cache_dir: str | os.PathLike | None = None) -> Path:
    """Build (or reuse) the demo's test split and zoom sweep; returns the data root."""
    key = _cache_key()
    for base in _cache_candidates(cache_dir):
        root = base / f"digits-demo-{key}"
        if _complete(root):
            return root
        try:
            build_digits(BUNDLED_NPZ, root, DEMO_CONFIG, splits=("test",), overwrite=True,
                         limit=DEMO_TEST_LIMIT)
        except Exception:  # unwritable cache, or another process won the race: checked below
            pass
        if _complete(root):
            return root
    raise DecError("cannot build the demo data in any cache folder",
                   "set XDG_CACHE_HOME to a writable folder")


def demo_test_count() -> int:
    """Number of test composites in the demo data."""
    return min(DEMO_CONFIG.n_test, DEMO_TEST_LIMIT)


def _cache_key() -> str:
    """Short hash of the settings and the embedded data, so a changed demo never reuses stale images."""
    text = (json.dumps(config_json(DEMO_CONFIG), sort_keys=True) + f"/{DEMO_TEST_LIMIT}/"
            + str(BUNDLED_NPZ.stat().st_size))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _cache_candidates(cache_dir: str | os.PathLike | None) -> list[Path]:
    if cache_dir is not None:
        return [Path(cache_dir)]
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return [base / "dec", Path(tempfile.gettempdir()) / f"dec-cache-{os.getuid() if hasattr(os, 'getuid') else 0}"]


def _complete(root: Path) -> bool:
    """True when ``root`` holds the whole test split and zoom sweep of the demo settings."""
    info_path = root / INFO_FILE
    if not info_path.is_file():
        return False
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if (info.get("config") != config_json(DEMO_CONFIG) or "test" not in info.get("splits", [])
            or info.get("limit") != DEMO_TEST_LIMIT):
        return False
    n = demo_test_count()
    n_test = sum(1 for _ in (root / "test").rglob("*.png"))
    n_zoom = sum(1 for _ in (root / ZOOM_DIR).rglob("*.png"))
    return (n_test == n and n_zoom == n * len(DEMO_CONFIG.zoom)
            and (root / ZOOM_DIR / "manifest.jsonl").is_file())
