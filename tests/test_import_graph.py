"""The runtime's modules import one another without a cycle, counting every import: at module level, under
``if TYPE_CHECKING:`` and inside functions. The pipeline table (``specs.py``) is data: it names its runners by key
and imports neither ``runners.py`` nor ``exits.py``. The graph is read from the source with ``ast``, so nothing is
imported to build it."""

from __future__ import annotations

import ast
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
PACKAGE = "cbnet_tl.runtime"


def _module_name(path: Path) -> str:
    parts = path.relative_to(RUNTIME).with_suffix("").parts
    return ".".join((PACKAGE, *(parts[:-1] if parts[-1] == "__init__" else parts)))


def _runtime_modules() -> dict:
    """{module name: source path} of every module under runtime/."""
    return {_module_name(path): path for path in sorted(RUNTIME.rglob("*.py"))}


def _imported(node: ast.AST, module: str, is_package: bool) -> list:
    """The absolute names an Import or ImportFrom node names: the module, and for ``from X import Y`` also
    ``X.Y`` (Y may be a submodule). Relative imports are resolved against ``module``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module
    return [source] + [f"{source}.{alias.name}" for alias in node.names]


def import_graph() -> dict:
    """{runtime module: set of runtime modules it imports anywhere in its source}."""
    modules = _runtime_modules()
    graph = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(name for name in _imported(node, module, is_package) if name in modules)
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycle(graph: dict):
    """One cycle of ``graph`` as a list of modules (the first repeated at the end), or None."""
    done, path, on_path = set(), [], set()

    def visit(module):
        path.append(module)
        on_path.add(module)
        for target in sorted(graph[module]):
            if target in on_path:
                return path[path.index(target):] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        on_path.discard(path.pop())
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """A cycle made of a function-level import and a TYPE_CHECKING one is found; relative imports resolve."""
    source = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import thing\n"
                       "def f():\n    import cbnet_tl.runtime.c\n")
    names = [name for node in ast.walk(source) if isinstance(node, (ast.Import, ast.ImportFrom))
             for name in _imported(node, "cbnet_tl.runtime.a", False)]
    assert {"cbnet_tl.runtime.b", "cbnet_tl.runtime.b.thing", "cbnet_tl.runtime.c"} <= set(names)
    package = ast.parse("from ..errors import BundleError\n").body[0]
    assert _imported(package, "cbnet_tl.runtime.dvfs", True)[0] == "cbnet_tl.runtime.errors"
    assert _imported(package, "cbnet_tl.runtime.dvfs.session", False)[0] == "cbnet_tl.runtime.errors"
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_runtime_has_no_import_cycle():
    graph = import_graph()
    assert f"{PACKAGE}.pipelines" in graph and f"{PACKAGE}.specs" in graph  # the walk found the modules
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in runtime/: " + " -> ".join(cycle)


def test_the_pipeline_table_imports_no_runner():
    imports = import_graph()[f"{PACKAGE}.specs"]
    assert not imports & {f"{PACKAGE}.runners", f"{PACKAGE}.exits"}, sorted(imports)
