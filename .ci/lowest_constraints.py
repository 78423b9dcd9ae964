"""Print pip constraints that pin every dependency of pyproject.toml to its declared lower bound.

Used by .ci/run's "lowest" leg so that a declared bound is a tested bound. torch and torchvision
are left out: they stay at what the machine's `pip install torch` picks. A dependency without a
`>=` bound is an error, because "any version" cannot be tested.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

UNPINNED = {"torch", "torchvision"}
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def lower_bounds(pyproject: Path) -> list[str]:
    """`name==bound` for every runtime and optional dependency, torch and torchvision excepted."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins = []
    for requirement in requirements:
        name, _extras, spec = REQUIREMENT.match(requirement.split(";")[0]).groups()
        if name.lower() in UNPINNED:
            continue
        bound = re.search(r">=\s*([^,\s]+)", spec)
        if bound is None:
            raise SystemExit(f"error: {requirement!r} in {pyproject} has no '>=' lower bound to test")
        pins.append(f"{name}=={bound.group(1)}")
    return pins


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    print("\n".join(lower_bounds(root / "pyproject.toml")))
