"""Plan guards for the outbox's monitoring and write paths on a big table.

``backlog()`` runs on every ``sagaflow status``, metrics scrape and admin page; the
inherited retry time runs on every ``publish``. On a table of published history
they must read through their partial indexes and touch the rows they count, not
the table. EXPLAIN ANALYZE's plan shape and row counts are the same on a fast or a
slow machine, so this is not a timing test.
"""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from sagaflow.outbox import store as outbox_store

pytestmark = pytest.mark.django_db

ROWS = 300_000
PENDING = 400
DEAD = 100
TABLE = "sagaflow_outboxevent"


@pytest.fixture
def history():
    """Published history, a few pending events (some of them retrying) and dead ones."""
    with connection.cursor() as c:
        c.execute(
            f"INSERT INTO {TABLE} (topic, key, payload, headers, state, attempts, last_error,"
            " created_at, available_at, published_at)"
            " SELECT 'big', 'k' || (g %% 1000), '{}', '{}',"
            "  CASE WHEN g > %(published)s + %(dead)s THEN 'pending'"
            "       WHEN g > %(published)s THEN 'dead' ELSE 'published' END,"
            "  CASE WHEN g > %(published)s + %(dead)s AND g %% 7 = 0 THEN 1 ELSE 0 END, '',"
            "  now(), now(), CASE WHEN g <= %(published)s THEN now() END"
            " FROM generate_series(1, %(rows)s) g",
            {"rows": ROWS, "published": ROWS - PENDING - DEAD, "dead": DEAD},
        )
        c.execute(f"ANALYZE {TABLE}")


def plan(sql: str, params=None) -> dict:
    with connection.cursor() as c:
        c.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
        raw = c.fetchone()[0]
    return (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]


def nodes(node: dict):
    yield node
    for child in node.get("Plans", ()):
        yield from nodes(child)


def scans_of(tree: dict) -> list[dict]:
    return [n for n in nodes(tree) if n.get("Relation Name") == TABLE]


def touched(scans: list[dict]) -> int:
    return sum(n.get("Actual Rows", 0) * n.get("Actual Loops", 1) for n in scans)


def test_backlog_reads_the_pending_and_dead_indexes_not_the_history(history):
    with CaptureQueriesContext(connection) as queries:
        backlog = outbox_store.backlog()
    assert backlog["pending"] == PENDING and backlog["dead"] == DEAD
    (sql,) = [q["sql"] for q in queries.captured_queries]
    tree = plan(sql)
    scans = scans_of(tree)
    assert not [n for n in scans if n["Node Type"] == "Seq Scan"], json.dumps(tree, indent=1)
    used = {n.get("Index Name") for n in scans}
    assert {"sagaflow_outbox_pending", "sagaflow_outbox_dead"} <= used, used
    assert touched(scans) <= PENDING + DEAD + 10, json.dumps(tree, indent=1)


def test_a_new_events_inherited_retry_time_is_one_probe_of_the_retrying_index(history):
    with CaptureQueriesContext(connection) as queries:
        outbox_store.insert_event(
            topic="t", key="k7", payload={}, headers={}, serialize_key=False, notify=False
        )
    (sql,) = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    tree = plan(sql)
    scans = [n for n in scans_of(tree) if n["Node Type"] != "ModifyTable"]
    assert {n.get("Index Name") for n in scans} == {"sagaflow_outbox_retrying"}, scans
    assert touched(scans) <= 10, json.dumps(tree, indent=1)
