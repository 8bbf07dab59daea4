"""The import graph of ``src/smtpguard`` is a DAG (issue 25; docs/design.md#architecture).

The graph is read from the source's AST, not from ``sys.modules``: every ``import`` and
``from ... import`` counts wherever it stands, at the top of a module, inside a
function, or under ``if TYPE_CHECKING:``. A function-local import or a type-only import
that closes a loop is still a loop: the modules cannot be understood, tested or moved
one without the other.

An edge goes to the module that is named: ``from smtpguard.core import session`` is an
edge to ``smtpguard.core.session`` when that is a module, and to the package
``smtpguard.core`` (its ``__init__``) when ``session`` is a name defined there. Importing
``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``, but those implicit parent edges
are not counted: a package that re-exports its own modules is not a cycle.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
ROOT = "smtpguard"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    kind: str  # "top", "local" (inside a function or class body) or "type" (TYPE_CHECKING)


def module_files() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package is its ``__init__``)."""
    found: dict[str, Path] = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    """Each import statement with where it stands: top, local or type."""
    out: list[tuple[ast.Import | ast.ImportFrom, str]] = []

    def walk(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                out.append((child, kind))
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    walk_stmt(stmt, "type" if kind == "top" else kind)
                for stmt in child.orelse:
                    walk_stmt(stmt, kind)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                walk(child, "local")
            else:
                walk(child, kind)

    def walk_stmt(stmt: ast.stmt, kind: str) -> None:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            out.append((stmt, kind))
        else:
            wrapper = ast.Module(body=[stmt], type_ignores=[])
            walk(wrapper, kind)

    walk(tree, "top")
    return out


def _resolve_base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def import_graph() -> dict[str, list[Edge]]:
    """Edges from each module of the package to the package's modules it imports."""
    files = module_files()
    graph: dict[str, list[Edge]] = {name: [] for name in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, kind in _imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                for alias in node.names:
                    name = alias.name
                    while name and name not in files:
                        name = name.rpartition(".")[0]
                    targets.append(name)
            else:
                base = _resolve_base(module, is_package, node)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in files else base)
            for target in targets:
                if target in files and target != module:
                    graph[module].append(Edge(module, target, node.lineno, kind))
    return graph


def strongly_connected(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        work: list[tuple[str, int]] = [(start, 0)]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, i = work[-1]
            edges = graph[node]
            if i < len(edges):
                work[-1] = (node, i + 1)
                nxt = edges[i].target
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(found)


def a_cycle(graph: dict[str, list[Edge]], component: list[str]) -> list[Edge]:
    """One shortest loop through the component's first module, as the edges that make it."""
    members = set(component)
    start = component[0]
    came: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for edge in graph[node]:
                if edge.target not in members:
                    continue
                if edge.target == start:
                    path = [edge]
                    while path[0].source != start:
                        path.insert(0, came[path[0].source])
                    return path
                if edge.target not in came:
                    came[edge.target] = edge
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"no loop through {start}")  # pragma: no cover


def describe(graph: dict[str, list[Edge]], component: list[str]) -> str:
    files = module_files()
    lines = [f"{len(component)} modules in a cycle: {', '.join(component)}", "  one loop:"]
    for edge in a_cycle(graph, component):
        where = files[edge.source].relative_to(SRC.parent)
        lines.append(f"    {edge.source} -> {edge.target}  ({where}:{edge.line}, {edge.kind})")
    return "\n".join(lines)


# --- the graph builder reads what it should ----------------------------------------


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    tree = ast.parse(
        "from __future__ import annotations\n"
        "import typing\n"
        "from smtpguard.core import grammar\n"
        "if typing.TYPE_CHECKING:\n"
        "    from smtpguard.core.session import Session\n"
        "def f():\n"
        "    from smtpguard.errors import CliError\n"
        "class C:\n"
        "    def m(self):\n"
        "        import smtpguard.netaddr\n"
    )
    kinds = {
        (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name): kind
        for node, kind in _imports(tree)
    }
    assert kinds == {
        "__future__": "top",
        "typing": "top",
        "smtpguard.core": "top",
        "smtpguard.core.session": "type",
        "smtpguard.errors": "local",
        "smtpguard.netaddr": "local",
    }


def test_the_graph_resolves_modules_names_and_relative_imports() -> None:
    graph = import_graph()
    assert "smtpguard.errors" in graph
    assert all(edge.target in graph for edges in graph.values() for edge in edges)
    cli_targets = {edge.target for edge in graph["smtpguard.cli"]}
    assert "smtpguard.errors" in cli_targets  # from smtpguard.errors import CliError
    assert "smtpguard" in cli_targets  # from smtpguard import __version__ (a name)


def test_tarjan_finds_a_loop_and_names_its_edges() -> None:
    graph = {
        "a": [Edge("a", "b", 1, "top")],
        "b": [Edge("b", "c", 2, "local")],
        "c": [Edge("c", "a", 3, "type"), Edge("c", "d", 4, "top")],
        "d": [],
    }
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert [(e.source, e.target) for e in a_cycle(graph, ["a", "b", "c"])] == [
        ("a", "b"),
        ("b", "c"),
        ("c", "a"),
    ]


# --- the package's graph --------------------------------------------------------------


def test_errors_is_a_leaf() -> None:
    assert import_graph()["smtpguard.errors"] == []


def _config_to_gateway() -> list[Edge]:
    return [
        edge
        for module, edges in import_graph().items()
        if module == "smtpguard.config" or module.startswith("smtpguard.config.")
        for edge in edges
        if edge.target.startswith("smtpguard.gateway")
    ]


def test_config_does_not_import_the_gateway() -> None:
    assert [str(e) for e in _config_to_gateway()] == []


def test_no_import_cycle() -> None:
    graph = import_graph()
    cycles = strongly_connected(graph)
    if cycles:
        pytest.fail("\n\n".join(describe(graph, component) for component in cycles))


def _session_importers() -> list[Edge]:
    return [
        edge
        for module, edges in import_graph().items()
        if module.startswith("smtpguard.core.") and module != "smtpguard.core.session"
        for edge in edges
        if edge.target == "smtpguard.core.session"
    ]


def test_no_core_part_imports_the_session() -> None:
    assert [str(e) for e in _session_importers()] == []
