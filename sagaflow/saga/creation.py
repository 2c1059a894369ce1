"""Recording a new run: the ``Saga`` row and all its steps in one statement.

Starting a saga happens inside the caller's transaction, usually a web request, so
it is one round trip on PostgreSQL (a data-modifying CTE); other databases take
the ORM's bulk insert. The first step is due at once; the rest wait their turn.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models.functions import Now

from ..models import Saga, SagaStep
from . import rows
from .store import now_plus


def insert_run(
    *,
    name: str,
    key: str | None,
    data: Any,
    correlation_id: str | None,
    deadline: timedelta | None,
    step_names: Sequence[str],
    version: int = 1,
    steps_fingerprint: str = "",
) -> tuple[Saga, int | None]:
    """Insert a run and its steps; returns it with its first step's id (due now).

    ``version`` and ``steps_fingerprint`` are those of the definition it runs: the
    run keeps to that version's steps for its whole life.

    With a ``key`` already used for ``name`` the existing run comes back with
    ``None``: nothing was inserted. The unique constraint on (name, key) makes
    concurrent starts with the same key safe: the loser's INSERT waits for the
    winner's commit, fails, and reads the winner's row.
    """
    saga_id = uuid.uuid4()
    if rows.native():
        return _insert_run_native(
            saga_id,
            name,
            key,
            data,
            correlation_id or str(saga_id),
            deadline,
            step_names,
            version,
            steps_fingerprint,
        )
    fields = {
        "id": saga_id,
        "name": name,
        "version": version,
        "steps_fingerprint": steps_fingerprint,
        "key": key,
        "data": data,
        "correlation_id": correlation_id or str(saga_id),
        "deadline_at": now_plus(deadline.total_seconds()) if deadline else None,
    }
    try:
        with transaction.atomic():
            saga = Saga.objects.create(**fields)
    except IntegrityError:
        if key is None:
            raise
        return Saga.objects.get(name=name, key=key), None
    steps = SagaStep.objects.bulk_create(
        SagaStep(
            saga=saga,
            index=i,
            name=step_name,
            due_at=Now() if i == 0 else None,
            dispatched_at=Now() if i == 0 else None,
        )
        for i, step_name in enumerate(step_names)
    )
    if deadline:
        saga.refresh_from_db(fields=["deadline_at"])  # computed on the database clock
    first = steps[0].pk
    if first is None:  # a backend that cannot return ids from a bulk insert
        first = SagaStep.objects.values_list("pk", flat=True).get(saga=saga, index=0)
    return saga, first


#: The run and its steps in one statement (one round trip). ``ON CONFLICT … DO NOTHING``
#: on the (name, key) constraint: a key already used inserts neither. Timestamps
#: are the database's clock, like every time the engine compares (``stuck``).
_INSERT_RUN = """
WITH s AS (
    INSERT INTO sagaflow_saga (id, name, key, state, data, results, correlation_id,
        current_step, deadline_at, created_at, updated_at, finished_at, error, version,
        steps_fingerprint)
    VALUES (%(id)s, %(name)s, %(key)s, 'running', %(data)s, '{}'::jsonb, %(correlation_id)s,
        0, STATEMENT_TIMESTAMP() + %(deadline)s * interval '1 second', STATEMENT_TIMESTAMP(),
        STATEMENT_TIMESTAMP(), NULL, '', %(version)s, %(fingerprint)s)
    ON CONFLICT (name, key) WHERE key IS NOT NULL DO NOTHING
    RETURNING id, deadline_at, created_at
), st AS (
    INSERT INTO sagaflow_sagastep (saga_id, "index", name, state, attempts,
        compensation_attempts, result, error, interrupted, due_at, dispatched_at,
        lease_token, lease_expires_at, started_at, finished_at, compensated_at, history)
    SELECT s.id, v.n - 1, v.name, 'pending', 0, 0, NULL, '', false,
        CASE WHEN v.n = 1 THEN STATEMENT_TIMESTAMP() END,
        CASE WHEN v.n = 1 THEN STATEMENT_TIMESTAMP() END,
        NULL, NULL, NULL, NULL, NULL, '[]'::jsonb
    FROM s, unnest(%(names)s::text[]) WITH ORDINALITY AS v(name, n)
    RETURNING id, "index"
)
SELECT s.deadline_at, s.created_at, (SELECT id FROM st WHERE "index" = 0) FROM s
"""


def _insert_run_native(
    saga_id: uuid.UUID,
    name: str,
    key: str | None,
    data: Any,
    correlation_id: str,
    deadline: timedelta | None,
    step_names: Sequence[str],
    version: int,
    steps_fingerprint: str,
) -> tuple[Saga, int | None]:
    params = {
        "id": saga_id,
        "name": name,
        "version": version,
        "fingerprint": steps_fingerprint,
        "key": key,
        "data": Saga._meta.get_field("data").get_db_prep_save(data, connection),
        "correlation_id": correlation_id,
        "deadline": deadline.total_seconds() if deadline else None,
        "names": list(step_names),
    }
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_RUN, params)
        row = cursor.fetchone()
    if row is None:  # the key was taken: that run, and nothing inserted
        return Saga.objects.get(name=name, key=key), None
    deadline_at, now, first = row
    saga = Saga(
        id=saga_id,
        name=name,
        key=key,
        data=data,
        results={},
        correlation_id=correlation_id,
        deadline_at=deadline_at,
        created_at=now,
        updated_at=now,
        version=version,
        steps_fingerprint=steps_fingerprint,
    )
    saga._state.adding = False
    saga._state.db = connection.alias
    return saga, first
