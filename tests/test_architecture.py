"""The shape of the code, checked: no import cycle between portd's modules, modules of a
readable size, and one owner for what a new endpoint kind needs.

The import graph counts the imports a module runs when it is loaded (top level, not
``if TYPE_CHECKING:`` blocks, not the lazy imports inside functions that keep start-up
fast). Run as a script it prints the graph's size and the longest modules:
``.venv/bin/python -m tests.test_architecture``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "portd"
MAX_MODULE_LINES = 450  # STYLE.md: "under ~400 lines"; a little slack, never a 700-line module


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def load_time_imports(
    path: Path, name: str, known: set[str], *, lazy_too: bool = False
) -> set[str]:
    """portd modules imported when ``name`` loads (the module and, for ``from x import y``,
    the submodule ``x.y`` when it is one); with ``lazy_too``, also inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = ast.walk(tree) if lazy_too else _top_level(tree.body)
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module in known and module != name}


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    for node in body:
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue
        if isinstance(node, ast.If | ast.Try):
            yield from _top_level(node.body)
            continue
        yield node


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    # Importing a.b also runs a's __init__ first, which may import a.b itself: that is how
    # packages re-export, not a cycle, so parent packages are not edges here.
    return {name: load_time_imports(path, name, known) for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path of module names, or None (a depth-first search)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the scan found the package
    assert find_cycle(graph) is None


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    """A checker that cannot fail is no proof."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]


def test_no_module_is_too_long_to_read_at_once() -> None:
    long = {
        name: lines
        for name, path in modules().items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_nothing_outside_the_endpoints_package_imports_an_endpoint_kind() -> None:
    """A new kind touches portd/endpoints/ only: the rest asks the Endpoint protocol.

    Exceptions, each for a reason: the testing kit builds peers for handler tests, the
    test server formats an IP server's URL; the inspect commands and the shell's connect
    work on IP addresses by nature.
    """
    allowed_prefixes = ("portd.endpoints", "portd.inspect", "portd.shell")
    allowed = {"portd.testing.kit", "portd.testing.server"}
    kinds = {"portd.endpoints.inet", "portd.endpoints.unix", "portd.endpoints.inet_sockets"}
    found = modules()
    offenders = {}
    for name, path in found.items():
        if name.startswith(allowed_prefixes) or name in allowed:
            continue
        used = load_time_imports(path, name, set(found), lazy_too=True) & kinds
        if used:
            offenders[name] = sorted(used)
    assert offenders == {}


if __name__ == "__main__":  # pragma: no cover
    graph = import_graph()
    edges = sum(len(targets) for targets in graph.values())
    print(f"{len(graph)} modules, {edges} load-time imports, cycle: {find_cycle(graph)}")
    sizes = sorted(
        ((len(p.read_text(encoding="utf-8").splitlines()), n) for n, p in modules().items()),
        reverse=True,
    )
    for lines, name in sizes[:12]:
        print(f"{lines:5d}  {name}")
