"""The library's shape: no import cycles, subpackages that say what they own, one top-level name."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "featurestore"
SUBPACKAGES = ("data", "models", "store", "train", "runs", "compare", "use")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module a `from ... import` names, relative imports resolved against `package`."""
    base = node.module or ""
    if node.level:
        anchor = package
        for _ in range(node.level - 1):
            anchor = anchor.rpartition(".")[0]
        base = f"{anchor}.{base}" if base else anchor
    return base


def import_graph() -> dict[str, set[str]]:
    """Module -> the featurestore modules it imports at run time (any depth, lazy imports too).

    `from featurestore.x import name` points at `featurestore.x.name` when that is a module, else
    at the package `featurestore.x` (its `__init__`), so a module that imports a sibling through
    its own package's `__init__` shows up as the cycle it is. Imports under `if TYPE_CHECKING:`
    never run and are left out.
    """
    modules = {_module_name(p): p for p in LIBRARY.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]

        def visit(node: ast.AST, package: str = package, deps: set[str] = deps) -> None:
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                for child in node.orelse:
                    visit(child)
                return
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, package)
                if base.startswith("featurestore"):
                    for alias in node.names:
                        full = f"{base}.{alias.name}"
                        deps.add(full if full in modules else base)
            for child in ast.iter_child_nodes(node):
                visit(child)

        visit(ast.parse(path.read_text()))
        deps.discard(name)
        graph[name] = {d for d in deps if d in modules}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first search, as the cycle it closes."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                dfs(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    return cycles


# The layers of docs/ARCHITECTURE.md, lowest first: a package imports only from its own layer's
# modules or the layers below it. "base" is every top-level module of featurestore (errors,
# config, tasks, fileio, devices, distributed, progress, plots).
LAYERS: tuple[str, ...] = ("base", "data", "models", "store", "runs", "use", "compare", "train",
                           "study")  # fmt: skip


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"  # featurestore/__init__.py
    return parts[1] if parts[1] in LAYERS else "base"


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(from layer, to layer) -> the modules behind the import, counting every import: at run
    time, lazy, under `if TYPE_CHECKING:` and through a package's `__init__`."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in LIBRARY.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [_absolute(node, package)]
            for target in targets:
                if target.startswith("featurestore.") and not target.startswith("featurestore.cli"):
                    key = (_layer(name), _layer(target))
                    if key[0] != key[1]:
                        edges.setdefault(key, []).append(name)
    return edges


def test_imports_point_down_the_stated_layers() -> None:
    """No import (type-only ones included) reaches up a layer: the shared result and record
    types (Task, FitResult) sit below everything that uses them."""
    order = {layer: i for i, layer in enumerate(LAYERS)}
    up = [
        f"{src} -> {dst}: {', '.join(sorted(set(mods)))}"
        for (src, dst), mods in sorted(package_edges().items())
        if order[dst] > order[src]
    ]
    assert not up, "imports against the layer order:\n" + "\n".join(up)
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    assert " -> ".join(LAYERS) in text, "docs/ARCHITECTURE.md states another layer order"


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_featurestore() -> None:
    graph = import_graph()
    assert "featurestore.data.manifest" in graph  # the walk saw the subpackages
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_each_subpackage_says_what_it_owns_and_exports_it(package: str) -> None:
    import importlib

    module = importlib.import_module(f"featurestore.{package}")
    assert module.__doc__ and len(module.__doc__.split()) >= 8
    exported = module.__all__
    assert exported, f"featurestore.{package} exports nothing"
    for name in exported:
        assert hasattr(module, name), f"featurestore.{package}.__all__ names missing {name}"


def test_tests_import_public_names_only() -> None:
    """Tests import from `featurestore.<package>`, not from the modules behind it."""
    offenders = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[0] == "featurestore" and len(parts) > 2 and parts[1] != "cli":
                    offenders.append(f"{path.relative_to(ROOT)}: from {node.module}")
    assert not offenders, "\n".join(offenders)


def test_the_distribution_installs_one_top_level_package() -> None:
    """No generic top-level `cli` in site-packages: the Typer app installs as featurestore.cli."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]
    assert {p.split(".")[0] for p in packages} == {"featurestore"}
    assert project["tool"]["setuptools"]["package-dir"] == {"featurestore.cli": "cli"}
    assert project["project"]["scripts"] == {"xray": "featurestore.cli.main:main"}
    on_disk = {
        "featurestore." + ".".join(p.parent.relative_to(LIBRARY).parts)
        for p in LIBRARY.rglob("__init__.py")
        if p.parent != LIBRARY
    }
    assert on_disk | {"featurestore", "featurestore.cli"} == set(packages)
