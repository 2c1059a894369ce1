"""The idempotency package has no import cycle, counting imports inside functions."""

from __future__ import annotations

import itertools

import grimp

PACKAGE = "sagaflow.idempotency"


def test_no_import_cycle_inside_the_idempotency_package():
    graph = grimp.build_graph("sagaflow", cache_dir=None)
    modules = sorted(m for m in graph.modules if m.startswith(PACKAGE + "."))
    assert f"{PACKAGE}.outcomes" in modules, modules
    cycles = [
        graph.find_shortest_chain(importer=a, imported=b)
        + graph.find_shortest_chain(importer=b, imported=a)[1:]
        for a, b in itertools.combinations(modules, 2)
        if graph.chain_exists(importer=a, imported=b) and graph.chain_exists(importer=b, imported=a)
    ]
    assert cycles == []


def test_the_key_stores_backends_share_only_their_result_types():
    """``postgresql`` and ``portable`` never import each other or the store."""
    graph = grimp.build_graph("sagaflow", cache_dir=None)
    for backend in ("postgresql", "portable"):
        inside = {
            m
            for m in graph.find_modules_directly_imported_by(f"{PACKAGE}.{backend}")
            if m.startswith(PACKAGE)
        }
        assert inside == {f"{PACKAGE}.outcomes"}, (backend, inside)
