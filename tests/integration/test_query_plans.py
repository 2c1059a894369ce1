"""Plan guards: on big tables, the hot queries use their index and touch O(batch) rows.

Not a timing test: EXPLAIN ANALYZE's plan shape and row counts are the same on a
fast or a slow machine. The tables get 10^6 outbox events and 10^5 sagas
(4*10^5 steps), almost all finished, as a busy production database would.
"""

import json
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from sagaflow.outbox import store as outbox_store
from sagaflow.saga import retention, scans

pytestmark = pytest.mark.django_db

OUTBOX_ROWS = 1_000_000
SAGAS = 100_000
BATCH = 100


@pytest.fixture
def big_tables():
    with connection.cursor() as c:
        c.execute(
            "INSERT INTO sagaflow_outboxevent (topic, key, payload, headers, state, attempts,"
            " last_error, created_at, available_at, published_at)"
            " SELECT 'big', 'k' || (g %% 5000), '{}', '{}',"
            "  CASE WHEN g > %s THEN 'pending' ELSE 'published' END, 0, '',"
            "  now(), now(), CASE WHEN g > %s THEN NULL ELSE now() END"
            " FROM generate_series(1, %s) g",
            [OUTBOX_ROWS - 5 * BATCH, OUTBOX_ROWS - 5 * BATCH, OUTBOX_ROWS],
        )
        c.execute(
            "INSERT INTO sagaflow_saga (id, name, key, state, data, results, correlation_id,"
            " current_step, created_at, updated_at, error, finished_at)"
            " SELECT md5(g::text)::uuid, 'big', NULL,"
            "  CASE WHEN g %% 1000 = 0 THEN 'running' ELSE 'completed' END,"
            "  '{}', '{}', g::text, 0, now(), now(), '',"
            # A few finished runs past the retention, the rest recent.
            "  CASE WHEN g %% 1000 = 0 THEN NULL"
            "   WHEN g %% 100 = 1 THEN now() - interval '40 days' ELSE now() END"
            " FROM generate_series(1, %s) g",
            [SAGAS],
        )
        c.execute(
            'INSERT INTO sagaflow_sagastep (saga_id, "index", name, state, attempts,'
            " compensation_attempts, error, interrupted, history, lease_token, lease_expires_at,"
            " due_at, dispatched_at)"
            " SELECT s.id, i, 's' || i, 'succeeded', 1, 0, '', false, '[]',"
            "  CASE WHEN s.state = 'running' AND i = 0 THEN gen_random_uuid() END,"
            "  CASE WHEN s.state = 'running' AND i = 0 THEN now() - interval '1 hour' END,"
            "  CASE WHEN s.state = 'running' AND i = 1 THEN now() - interval '1 hour' END,"
            "  CASE WHEN s.state = 'running' AND i = 1 THEN now() - interval '1 hour' END"
            " FROM sagaflow_saga s CROSS JOIN generate_series(0, 3) i WHERE s.name = 'big'"
        )
        c.execute("ANALYZE sagaflow_outboxevent")
        c.execute("ANALYZE sagaflow_saga")
        c.execute("ANALYZE sagaflow_sagastep")


def plan(sql: str) -> dict:
    with connection.cursor() as c:
        c.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
        raw = c.fetchone()[0]
    return (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]


def nodes(node: dict):
    yield node
    for child in node.get("Plans", ()):
        yield from nodes(child)


def captured(call) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        call()
    return [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].lstrip().upper().startswith(("SELECT", "WITH", "UPDATE"))
    ]


def assert_indexed(sql: str, table: str, index: str, max_rows: int) -> None:
    tree = plan(sql)
    scans = [n for n in nodes(tree) if n.get("Relation Name") == table]
    assert scans, f"{table} not in the plan of {sql}"
    assert not [n for n in scans if n["Node Type"] == "Seq Scan"], json.dumps(tree, indent=1)
    assert index in {n.get("Index Name") for n in scans}, json.dumps(tree, indent=1)
    touched = sum(n.get("Actual Rows", 0) * n.get("Actual Loops", 1) for n in scans)
    assert touched <= max_rows, (touched, json.dumps(tree, indent=1))


def test_relay_and_sweeper_queries_use_their_partial_indexes(big_tables):
    # One test, so the big tables are built once.
    claim = [s for s in captured(lambda: outbox_store.claim(BATCH)) if "FOR UPDATE" in s]
    assert claim
    sql = re.sub(r"\s+FOR UPDATE OF e SKIP LOCKED", "", claim[-1])
    assert_indexed(sql, "sagaflow_outboxevent", "sagaflow_outbox_pending", max_rows=20 * BATCH)
    # The head-of-line checks probe the pending rows of each key, not all pending rows.
    assert_indexed(sql, "sagaflow_outboxevent", "sagaflow_outbox_pending_key", max_rows=20 * BATCH)
    # The same with a floor (what a relay uses between full claims).
    floor = OUTBOX_ROWS - 4 * BATCH
    claim = [
        s for s in captured(lambda: outbox_store.claim(BATCH, floor=floor)) if "FOR UPDATE" in s
    ]
    sql = re.sub(r"\s+FOR UPDATE OF e SKIP LOCKED", "", claim[-1])
    assert_indexed(sql, "sagaflow_outboxevent", "sagaflow_outbox_pending", max_rows=20 * BATCH)

    (leases,) = captured(lambda: scans.expired_leases(500))
    assert_indexed(leases, "sagaflow_sagastep", "sagaflow_step_leased", max_rows=1000)
    (deadlines,) = captured(lambda: scans.overdue_sagas(500))
    assert_indexed(deadlines, "sagaflow_saga", "sagaflow_saga_live_deadline", max_rows=1000)
    waiting = [s for s in captured(lambda: scans.take_lost_dispatches(500, 0)) if "FOR UPDATE" in s]
    sql = re.sub(r"\s+FOR UPDATE OF .*$", "", waiting[0])
    assert_indexed(sql, "sagaflow_sagastep", "sagaflow_step_waiting", max_rows=1000)

    # Retention: finished runs past it, by their partial index, not the whole table.
    doomed = retention._PURGE.split("WITH doomed AS (")[1].split("FOR UPDATE")[0]
    doomed = doomed % {"older_than": 30 * 86400, "batch": 1000}
    tree = plan(doomed)  # a BitmapOr of the finished and the resolved runs' indexes
    assert not [n for n in nodes(tree) if n["Node Type"] == "Seq Scan"], json.dumps(tree)
    used = {n.get("Index Name") for n in nodes(tree)}
    assert {"sagaflow_saga_finished", "sagaflow_saga_resolved"} <= used, json.dumps(tree)
    assert tree["Actual Rows"] == 1000
    (live,) = captured(scans.live_versions)
    assert_indexed(live, "sagaflow_saga", "sagaflow_saga_state_updated", max_rows=1000)
