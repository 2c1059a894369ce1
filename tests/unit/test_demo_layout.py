"""The demo shop's modules import each other without a cycle, and its task names hold.

Counting imports inside functions: they hide a cycle from the interpreter, not from
a reader. grimp reads every import statement of the package, wherever it is.
"""

from __future__ import annotations

import grimp
import pytest
from celery import current_app

pytestmark = pytest.mark.timeout(60)


def _cycles(package: str) -> list[tuple[str, ...]]:
    graph = grimp.build_graph(package, include_external_packages=False, cache_dir=None)
    found = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                found.append((module, *back))
    return found


def test_demo_shop_has_no_import_cycle():
    assert _cycles("demo_shop") == []


def test_the_shops_celery_task_names_are_unchanged():
    import demo_shop.tasks  # noqa: F401  (registers them)

    names = set(current_app.tasks)
    assert {
        "demo_shop.release_expired_holds",
        "demo_shop.reconcile",
        "demo_shop.deliver_local_events",
    } <= names
