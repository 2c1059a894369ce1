"""The harness's hands on the chaos app's own sagas (``chaosapp/sagas.py``), in its
process, through Django: start a probe run, read how it ended, and ask PostgreSQL
whether a run's row lock is held.

Every function closes a connection the database may have dropped (another fault
restarts PostgreSQL) before it starts.
"""

from __future__ import annotations

import uuid

import psycopg


def _fresh() -> None:
    from django.db import close_old_connections

    close_old_connections()


def _start(definition, data: dict | None = None) -> str:
    from django.db import transaction

    _fresh()
    with transaction.atomic():
        return str(definition.start(data or {}).id)


def start_locked() -> str:
    from .chaosapp.sagas import locked

    return _start(locked)


def start_deadline_probes() -> dict[str, str]:
    """One run each whose deadline passes during a retry wait (after an attempt that
    acted and failed, and after one whose worker died) and during a running step."""
    from .chaosapp import sagas

    return {
        "wait": _start(sagas.deadline_wait),
        "lost": _start(sagas.deadline_lost),
        "running": _start(sagas.deadline_running),
    }


def start_deadline_wait() -> str:
    from .chaosapp.sagas import deadline_wait

    return _start(deadline_wait)


def start_deploy(fail: bool) -> str:
    from .chaosapp.sagas import deploy

    return _start(deploy, {"fail": fail})


def start_clock() -> str:
    from .chaosapp.sagas import clock

    return _start(clock)


def start_undo() -> str:
    """A run that compensates at once (its second step aborts): a compensation for an
    armed ``compensation.after_action`` to fire in, without waiting for the load."""
    from .chaosapp.sagas import undo

    return _start(undo)


def states(saga_ids: list[str]) -> dict[str, str]:
    from sagaflow.models import Saga

    _fresh()
    return {str(k): v for k, v in Saga.objects.filter(pk__in=saga_ids).values_list("id", "state")}


TERMINAL = ("completed", "compensated", "failed")


def all_terminal(saga_ids: list[str]) -> bool:
    found = states(saga_ids)
    return len(found) == len(saga_ids) and all(s in TERMINAL for s in found.values())


def steps_succeeded(saga_ids: list[str], step: str) -> int:
    from sagaflow.models import SagaStep

    _fresh()
    return SagaStep.objects.filter(saga_id__in=saga_ids, name=step, state="succeeded").count()


def lock_held(dsn: str, saga_id: str) -> bool:
    """Whether another session holds the row lock of run ``saga_id`` (NOWAIT probe,
    rolled back at once, on a connection of its own)."""
    with psycopg.connect(dsn, connect_timeout=3) as conn:
        try:
            conn.execute(
                "SELECT 1 FROM sagaflow_saga WHERE id = %s FOR UPDATE NOWAIT",
                [uuid.UUID(saga_id)],
            )
        except psycopg.errors.LockNotAvailable:
            return True
        finally:
            conn.rollback()
    return False


def effect_skews(saga_ids: list[str]) -> list[float]:
    """Seconds the clock of each worker that wrote an ``Effect`` of these runs was off
    from the database's (``py_at - at``)."""
    from .chaosapp.models import Effect

    _fresh()
    return [
        (py_at - at).total_seconds()
        for py_at, at in Effect.objects.filter(saga_id__in=saga_ids).values_list("py_at", "at")
    ]


def pass_deadline(saga_id: str) -> bool:
    """Make a running run's deadline pass now (as time would); False if it is no
    longer running."""
    from django.db.models.functions import Now

    from sagaflow.models import Saga

    _fresh()
    return bool(Saga.objects.filter(pk=saga_id, state="running").update(deadline_at=Now()))


def deadline_at(saga_id: str):
    from sagaflow.models import Saga

    _fresh()
    return Saga.objects.filter(pk=saga_id).values_list("deadline_at", flat=True).first()


def step_of(saga_id: str, name: str) -> dict | None:
    """The step's state, attempts, lease and retry wait, by the database's clock."""
    from django.db.models import DurationField, ExpressionWrapper, F
    from django.db.models.functions import Now

    from sagaflow.models import SagaStep

    _fresh()
    return (
        SagaStep.objects.filter(saga_id=saga_id, name=name)
        .annotate(waiting=ExpressionWrapper(F("due_at") - Now(), output_field=DurationField()))
        .values("state", "attempts", "interrupted", "lease_token", "waiting")
        .first()
    )
