"""The package's house rules, checked on its source: honest imports, no cycles, modules of a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "resgrad"
MAX_LINES = 400


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """The resgrad modules ``path`` imports at its top level, and the (line, module) of those imported inside a def."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    inner: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_def: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only: no import at run time
            names = []
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [child.module] + [f"{child.module}.{a.name}" for a in child.names]
            elif isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            found = {n for n in names if n in MODULES}
            if found:
                (inner.extend((child.lineno, n) for n in found) if in_def else top.update(found))
            visit(child, in_def or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, inner


GRAPH = {name: _imports(path)[0] - {name} for name, path in MODULES.items()}


def test_the_tree_has_rooms_along_the_data_flow() -> None:
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py" and name != "resgrad"}
    assert {"resgrad.sweeps", "resgrad.report", "resgrad.experiments", "resgrad.bench", "resgrad.cli"} <= packages


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(GRAPH[name]):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep) :] + [name, dep]))
            if dep not in state:
                walk(dep, path + [name])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            walk(name, [])


def test_no_resgrad_import_inside_a_function_outside_the_cli() -> None:
    found = [
        f"{path.relative_to(SRC.parent)}:{line} imports {mod}"
        for name, path in MODULES.items()
        if not name.startswith("resgrad.cli")
        for line, mod in _imports(path)[1]
    ]
    assert found == []


def test_the_recorder_imports_nothing_from_resgrad_beyond_its_numerics() -> None:
    assert GRAPH["resgrad.gradients"] <= {
        "resgrad.norms",
        "resgrad.activations",
        "resgrad.watched",
        "resgrad.schedules",
        "resgrad.records",
        "resgrad.errors",
    }


def test_no_facade_re_exports_a_name_it_does_not_use() -> None:
    # A re-export needs `noqa: F401` to pass the linter; a package __init__ may list its public API in __all__.
    found = [
        f"{path.relative_to(SRC.parent)}:{i}"
        for name, path in MODULES.items()
        if path.name != "__init__.py"
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if "noqa: F401" in line and "resgrad" in line
    ]
    assert found == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_fits_on_a_few_screens(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; cut it along a seam (at most {MAX_LINES})"
