"""No module imports itself back, through any chain, in any of our packages.

Imports inside functions count: they hide a cycle rather than remove it. The
layers themselves are import-linter contracts (``pyproject.toml``, ``make lint``);
this finds the loops those contracts do not name. Run it alone with
``pytest tests/unit/test_import_cycles.py``.
"""

from __future__ import annotations

import grimp
import pytest


def _cycles(graph: grimp.ImportGraph, package: str) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    modules = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in modules:
                continue
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    return found


@pytest.mark.parametrize("package", ["sagaflow", "demo_shop", "bench", "tests"])
def test_no_import_cycles(package):
    # Imports under ``if TYPE_CHECKING:`` never run (a mixin naming the class it is
    # mixed into); every import that runs counts, at module level or in a function.
    graph = grimp.build_graph(package, cache_dir=None, exclude_type_checking_imports=True)
    assert _cycles(graph, package) == []
