"""The package layout's rules (docs/design.md, "Package layout"): areas as folders, imports one way.

Each area may import only the areas below it (`ALLOWED`, as each area's ``__init__`` docstring
says); no import cycle between modules; no module over 450 lines and no function over 60.
Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dec_cli"
ALLOWED = {
    "core": set(),
    "warps": {"core"},
    "canon": {"warps", "core"},
    "backbones": {"canon", "warps", "core"},
    "trees": {"warps", "core"},
    "evaluation": {"backbones", "canon", "trees", "warps", "core"},
    "training": {"evaluation", "backbones", "canon", "trees", "warps", "core"},
    "jobs": {"training", "evaluation", "backbones", "canon", "trees", "warps", "core"},
    "cli": {"jobs", "training", "evaluation", "backbones", "canon", "trees", "warps", "core"},
}
TOP_LEVEL = {"__init__", "__main__", "version", "legacy"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The dec_cli modules ``path`` imports (``from dec_cli.a import b`` names module a.b where it exists)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("dec_cli"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            found |= {n for n in names if n in modules} or {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dec_cli")}
    return {m for m in found if m in modules}


def _area(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def test_every_module_sits_in_an_area_folder():
    loose = [m for m in _modules() if _area(m) is None and m.split(".")[-1] not in TOP_LEVEL and m != "dec_cli"]
    assert loose == []
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == sorted(ALLOWED)
    for area in ALLOWED:
        doc = ast.get_docstring(ast.parse((PACKAGE / area / "__init__.py").read_text())) or ""
        assert "May import" in doc, area


def test_areas_import_only_the_areas_below_them():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        area = _area(name)
        if area is None:
            continue
        for target in _imports(path, modules):
            other = _area(target)
            if other is not None and other != area and other not in ALLOWED[area]:
                wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m, "dec_cli"} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt])
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_modules_and_functions_stay_small():
    too_long = []
    for name, path in _modules().items():
        text = path.read_text()
        if text.count("\n") > 450:
            too_long.append(f"module {name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - start + 1 > 60:
                    too_long.append(f"function {name}.{node.name}: {node.end_lineno - start + 1} lines")
    assert too_long == []
