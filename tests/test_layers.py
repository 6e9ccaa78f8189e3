"""The package's layers, read from the source: every import of every module under mlxinterp/ (top of the
module, inside functions, under TYPE_CHECKING) forms a graph that must have no cycles, must follow the
layer rules of PLAN.md ("Layers"), and must not reach another module's _private names.

The checker itself is tested on a small synthetic graph, so a rule that silently stopped firing would fail.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "mlxinterp"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# layer -> the layers it may import (itself always allowed). "root" is mlxinterp/__init__.py and __main__.py.
ALLOWED = {
    "core": set(),
    "analysis": {"core"},
    "tasks": {"core", "analysis"},
    "suite": {"core"},
    "studies": {"core", "analysis", "tasks", "suite"},
    "serve": {"core", "analysis", "tasks", "suite"},
    "cli": {"core", "analysis", "tasks", "suite", "studies", "serve"},
    "root": {"core", "cli"},
}


@dataclass(frozen=True)
class Edge:
    source: str  # importing module, dotted
    target: str  # imported module, dotted (a package's __init__ is the package name)
    names: tuple[str, ...]  # names taken with `from target import ...`
    line: int
    typing_only: bool = False  # under `if TYPE_CHECKING:`: checked against the layers, never executed


def _typing_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return guarded


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def scan(root: Path = ROOT) -> tuple[set[str], list[Edge]]:
    """Every module under `root` and every import edge between modules of the package (or to bench)."""
    files = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in files}
    edges = []
    for path in files:
        src = module_name(path, root)
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        guarded = _typing_only(tree)
        for node in ast.walk(tree):
            typing_only = id(node) in guarded
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in (PACKAGE, "bench"):
                        edges.append(Edge(src, alias.name, (), node.lineno, typing_only))
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(src, is_pkg, node)
                if base.split(".")[0] not in (PACKAGE, "bench"):
                    continue
                plain = tuple(a.name for a in node.names if f"{base}.{a.name}" not in modules)
                for a in node.names:  # `from pkg import submodule` is an edge to the submodule
                    if f"{base}.{a.name}" in modules:
                        edges.append(Edge(src, f"{base}.{a.name}", (), node.lineno, typing_only))
                if plain:
                    edges.append(Edge(src, base, plain, node.lineno, typing_only))
    return modules, edges


def _absolute(src: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = src.split(".") if is_pkg else src.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "bench":
        return "bench"
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else "root"


def layer_violations(edges: list[Edge]) -> list[str]:
    out = []
    for e in edges:
        a, b = layer(e.source), layer(e.target)
        if b == "bench":
            out.append(f"{e.source}:{e.line} imports {e.target}: nothing in the package imports bench/")
        elif a != b and b not in ALLOWED[a]:
            out.append(f"{e.source}:{e.line} ({a}) imports {e.target} ({b}); {a} may import "
                       f"{', '.join(sorted(ALLOWED[a])) or 'nothing else of mlxinterp'}")
    return out


def private_imports(edges: list[Edge]) -> list[str]:
    return [f"{e.source}:{e.line} imports {n} from {e.target}" for e in edges for n in e.names
            if n.startswith("_") and not n.startswith("__") and e.source != e.target]


def cycles(modules: set[str], edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted; imports that only run
    under a type checker cannot form a cycle at run time and are left out."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        if e.target in graph and e.target != e.source and not e.typing_only:
            graph[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    return scan()


def test_the_package_has_the_layers_it_claims(graph):
    modules, edges = graph
    assert {layer(m) for m in modules} >= {"core", "analysis", "tasks", "suite", "studies", "cli"}
    assert len(edges) > 100  # the scan really sees the imports


def test_no_import_cycles(graph):
    assert cycles(*graph) == []


def test_layer_rules(graph):
    assert layer_violations(graph[1]) == []


def test_no_private_names_imported_across_modules(graph):
    assert private_imports(graph[1]) == []


def backend_switches(root: Path = ROOT) -> list[str]:
    """Calls that change matplotlib's backend (`matplotlib.use`, `pyplot.switch_backend`) outside the CLI."""
    out = []
    for path in sorted(root.rglob("*.py")):
        if layer(module_name(path, root)) == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("use", "switch_backend") \
                    and ast.unparse(node.func.value).split(".")[0] in ("matplotlib", "mpl", "plt", "pyplot"):
                out.append(f"{module_name(path, root)}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_library_code_never_switches_the_matplotlib_backend(tmp_path):
    """A notebook's inline backend must survive every library plot (figures are built without pyplot)."""
    assert backend_switches() == []
    (tmp_path / PACKAGE / "analysis").mkdir(parents=True)
    (tmp_path / PACKAGE / "analysis" / "fig.py").write_text('import matplotlib\nmatplotlib.use("Agg")\n')
    assert backend_switches(tmp_path / PACKAGE) == ['mlxinterp.analysis.fig:2: matplotlib.use(\'Agg\')']


def test_importing_the_cli_loads_no_heavy_module():
    """`mlxinterp --help` stays fast because the CLI imports MLX, mlx-lm and matplotlib only inside commands."""
    heavy = ("mlx.core", "mlx_lm", "matplotlib", "torch", "transformers")
    code = f"import sys, mlxinterp.cli; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_checker_finds_what_it_is_meant_to_find(tmp_path):
    pkg = tmp_path / PACKAGE
    for sub in ("core", "analysis", "studies"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from mlxinterp.analysis import b  # function-level\n")
    (pkg / "analysis" / "b.py").write_text("from mlxinterp.core import a\nfrom mlxinterp.core.a import _hidden\n")
    (pkg / "studies" / "c.py").write_text("from . import d\nimport bench.harness\n")
    (pkg / "studies" / "d.py").write_text("from .c import thing\n")
    (pkg / "studies" / "e.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                          "    from mlxinterp.studies.f import F\n")
    (pkg / "studies" / "f.py").write_text("from mlxinterp.studies import e\n")
    modules, edges = scan(pkg)
    assert "mlxinterp.studies.c" in modules and layer("mlxinterp.studies.c") == "studies"
    assert cycles(modules, edges) == [["mlxinterp.analysis.b", "mlxinterp.core.a"],
                                      ["mlxinterp.studies.c", "mlxinterp.studies.d"]]
    bad = layer_violations(edges)
    assert len(bad) == 2 and "mlxinterp.core.a:2 (core) imports mlxinterp.analysis.b (analysis)" in bad[0]
    assert "nothing in the package imports bench/" in bad[1]
    assert private_imports(edges) == ["mlxinterp.analysis.b:2 imports _hidden from mlxinterp.core.a"]
