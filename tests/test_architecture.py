"""The house rules of the code, read statically (ast; nothing is imported): no import cycle
among the modules of keras_vit, training and export; the layering (keras_vit imports neither
training nor export, export never imports training); no function over 60 lines."""
from __future__ import annotations

import ast
import pathlib
from typing import Dict, Iterator, List, Set, Tuple

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("keras_vit", "training", "export")
MAX_FUNCTION_LINES = 60
# package -> the packages it must never import (the layering of docs/architecture.md).
FORBIDDEN = {"keras_vit": ("training", "export"), "export": ("training",)}


def _sources() -> Dict[str, pathlib.Path]:
    """``{dotted module name: file}`` of every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _ancestors(name: str) -> List[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _named(node: ast.AST, importer: str, is_package: bool) -> Iterator[Tuple[str, str]]:
    """(module, name imported from it or "") for each name an import statement names."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, ""
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the importer's package, one level up per extra dot
            package = importer if is_package else importer.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        for alias in node.names:
            yield base, alias.name


def _imports(name: str, path: pathlib.Path, modules: Set[str]) -> Set[str]:
    """The project modules that module ``name`` imports, at the top or inside a function.

    ``from a.b import c`` imports module ``a.b.c`` when there is one, else ``a.b``. Python
    runs the ``__init__`` of every package above an imported module first, so those count
    too, except the packages above the importer itself (already being initialised)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    own = set(_ancestors(name))
    edges = set()
    for node in ast.walk(tree):
        for module, attribute in _named(node, name, path.name == "__init__.py"):
            target = f"{module}.{attribute}" if f"{module}.{attribute}" in modules else module
            while target and target not in modules:  # import a.b.function_or_class
                target = target.rpartition(".")[0]
            if target:
                edges.add(target)
                edges.update(a for a in _ancestors(target) if a not in own)
    edges.discard(name)
    return edges


def import_graph() -> Dict[str, Set[str]]:
    sources = _sources()
    return {name: _imports(name, path, set(sources)) for name, path in sources.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_cycle_finder_finds_a_circle_and_nothing_in_a_line():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_imports_inside_functions_and_relative_ones_are_edges(tmp_path):
    path = tmp_path / "plan.py"
    path.write_text("import os\nfrom .key_map import Entry\n\n\ndef f():\n"
                    "    from keras_vit.sources import NUMERICS\n    import keras_vit.layers.x\n")
    modules = {"keras_vit", "keras_vit.sources", "keras_vit.layers", "keras_vit.layers.x",
               "keras_vit.checkpoints", "keras_vit.checkpoints.key_map"}
    assert _imports("keras_vit.checkpoints.plan", path, modules) == {
        "keras_vit.checkpoints.key_map", "keras_vit.sources", "keras_vit.layers.x",
        "keras_vit.layers"}  # the package above an imported module runs first


def test_no_import_cycle_in_the_project():
    graph = import_graph()
    assert "keras_vit.checkpoints" in graph and "export.cli" in graph  # the walk found them
    found = cycles(graph)
    assert not found, "import cycles (each line: modules importing each other):\n" + "\n".join(
        " <-> ".join(component) for component in found)


def layering_violations(graph: Dict[str, Set[str]]) -> List[str]:
    """``"a imports b"`` for each edge that goes against :data:`FORBIDDEN`."""
    return sorted(f"{module} imports {target}" for module, targets in graph.items()
                  for target in targets
                  if target.split(".")[0] in FORBIDDEN.get(module.split(".")[0], ()))


def test_layering_checker_finds_an_upward_import():
    graph = {"keras_vit.models": {"keras_vit.layers", "training.data"},
             "export.cli": {"keras_vit", "training"}, "training.cli": {"export.cli"}}
    assert layering_violations(graph) == ["export.cli imports training",
                                          "keras_vit.models imports training.data"]


def test_layering_keras_vit_imports_neither_training_nor_export_and_export_not_training():
    wrong = layering_violations(import_graph())
    assert not wrong, "\n".join(wrong)


def long_functions(limit: int = MAX_FUNCTION_LINES) -> List[str]:
    """``file:function:lines`` for every function (methods and nested ones included) of the
    packages longer than ``limit`` lines, from its ``def`` line to its last line."""
    found = []
    for path in _sources().values():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(ROOT)}:{node.name}:{lines}")
    return sorted(found)


def test_no_function_over_60_lines():
    found = long_functions()
    assert not found, (f"functions over {MAX_FUNCTION_LINES} lines (split them into named "
                       "steps):\n" + "\n".join(found))
