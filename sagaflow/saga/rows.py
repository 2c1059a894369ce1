"""Reading and writing whole model rows with plain SQL, for the engine's hot path.

Building an ORM query costs more than running it: in a no-op step the engine spent
about 0.6 ms of Python per statement against 0.04 ms in PostgreSQL. These helpers
write the SQL once per model and field set, and turn rows into model instances
with the fields' own converters, so callers keep working with ``Saga`` and
``SagaStep`` objects. Statements go in as few round trips as their order allows
(psycopg's pipeline mode): on a busy 2-core machine each round trip costs about a
third of a millisecond, more than the statement. They bypass Django's query log.
On other databases (SQLite in the demo) they fall back to the ORM; the SQL here is
PostgreSQL's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar, cast

import psycopg
from django.db import connection
from django.db.models import Field, Model
from django.db.models.functions import Now

if TYPE_CHECKING:
    from django.db.models import ExpressionWrapper
    from django.db.models.expressions import CombinedExpression

M = TypeVar("M", bound=Model)


class NowPlus:
    """The database's ``now()`` shifted by ``seconds``, as a value to write.

    Also an ORM expression (``as_expression``) for the fallback path.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


def native() -> bool:
    return connection.vendor == "postgresql"


@cache
def _columns(model: type[Model]) -> tuple[str, list[str]]:
    fields = model._meta.concrete_fields
    columns = ", ".join(f'"{f.column}"' for f in fields)
    return columns, [f.attname for f in fields]


Query = tuple[type[Model], str, Sequence[Any], str]


def select(model: type[M], where: str, params: Sequence[Any], suffix: str = "") -> list[M]:
    """Instances of ``model`` for ``SELECT … WHERE where suffix``; each carries ``db_now``
    (this statement's time, as the ORM's ``annotate(db_now=Now())`` would)."""
    return select_many([(model, where, params, suffix)])[0]


def select_many(
    queries: Sequence[Query], prelude: Sequence[tuple[str, Sequence[Any]]] = ()
) -> list[list[Any]]:
    """Run several selects (after any batched writes and ``prelude``) in one round
    trip, in order.

    The server runs them one after another, each with its own snapshot, so a read
    that follows a ``FOR UPDATE`` sees the rows as they are once the lock is held.
    """
    statements = list(prelude)
    for model, where, params, suffix in queries:
        columns, _ = _columns(model)
        sql = (
            f"SELECT {columns}, STATEMENT_TIMESTAMP() FROM {model._meta.db_table}"
            f" WHERE {where} {suffix}"
        )
        statements.append((sql, params))
    pending = _pending.get() or []
    cursors = _pipelined([*pending, *statements])
    pending.clear()
    results = []
    for (model, *_), cursor in zip(queries, cursors[-len(queries) :], strict=True):
        attnames = _columns(model)[1]
        results.append([_instance(model, attnames, row) for row in cursor.fetchall()])
    return results


def transaction_limits(
    *, lock_timeout: float, statement_timeout: float, idle_timeout: float
) -> tuple[str, list[Any]]:
    """The statement that bounds the current transaction's waits (``SET LOCAL``)."""
    return (
        "SELECT set_config('lock_timeout', %s, true),"
        " set_config('statement_timeout', %s, true),"
        " set_config('idle_in_transaction_session_timeout', %s, true)",
        [_ms(lock_timeout), _ms(statement_timeout), _ms(idle_timeout)],
    )


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _pipelined(statements: Sequence[tuple[str, Sequence[Any]]]) -> list[psycopg.Cursor]:
    """Execute ``statements`` in one round trip (psycopg's pipeline mode).

    Errors come out as Django's (``django.db.OperationalError``…), which also marks
    the connection for the health check between tasks, as Django's own cursor does.
    """
    connection.ensure_connection()
    conn = connection.connection
    cursors = [psycopg.Cursor(conn) for _ in statements]
    with connection.wrap_database_errors:
        if len(statements) == 1:
            cursors[0].execute(*statements[0])
            return cursors
        with conn.pipeline():
            for cursor, (sql, params) in zip(cursors, statements, strict=True):
                cursor.execute(sql, params)
    return cursors


_pending: ContextVar[list[tuple[str, Sequence[Any]]] | None] = ContextVar(
    "sagaflow_pending_writes", default=None
)


@contextlib.contextmanager
def batched_writes() -> Iterator[None]:
    """Hold :func:`update`'s statements and send them together: before the next read,
    or at the end of the block (which must end before the transaction does)."""
    if not native() or _pending.get() is not None:
        yield
        return
    pending: list[tuple[str, Sequence[Any]]] = []
    token = _pending.set(pending)
    try:
        yield
        if pending:
            _pipelined(pending)
    finally:
        _pending.reset(token)


def _instance(model: type[M], attnames: list[str], row: Sequence[Any]) -> M:
    values = []
    for field, value in zip(model._meta.concrete_fields, row, strict=False):
        if hasattr(field, "from_db_value"):
            value = field.from_db_value(value, None, connection)
        values.append(value)
    instance = model.from_db(connection.alias, attnames, values)
    instance.db_now = row[-1]  # type: ignore[attr-defined]
    return instance


def _field(instance: Model, name: str) -> Field[Any, Any]:
    # update_fields name concrete fields (Model.save refuses anything else), never the
    # reverse side of a relation, which get_field may also return.
    return cast("Field[Any, Any]", instance._meta.get_field(name))


def update(instance: Model, fields: Iterable[str]) -> None:
    """``instance.save(update_fields=fields)`` without building an ORM query.

    Values may be ``Now()`` or :class:`NowPlus`, computed by the database.
    """
    fields = list(fields)
    meta = instance._meta
    if not native():
        for name in fields:
            value = getattr(instance, _field(instance, name).attname)
            if isinstance(value, NowPlus):
                setattr(instance, _field(instance, name).attname, as_expression(value))
        instance.save(update_fields=fields)
        return
    assignments, params = [], []
    for name in fields:
        field = _field(instance, name)
        # auto_now fields take the database's clock, which every comparison uses
        # (``stuck``), not this worker's: a drifting worker must not make a run
        # look stuck, or hide one that is.
        auto_now = getattr(field, "auto_now", False)
        value = Now() if auto_now else field.pre_save(instance, False)
        if isinstance(value, Now):
            assignments.append(f'"{field.column}" = STATEMENT_TIMESTAMP()')
        elif isinstance(value, NowPlus):
            assignments.append(
                f"\"{field.column}\" = STATEMENT_TIMESTAMP() + %s * interval '1 second'"
            )
            params.append(value.seconds)
        else:
            assignments.append(f'"{field.column}" = %s')
            params.append(field.get_db_prep_save(value, connection))
    params.append(instance.pk)
    table, pk = meta.db_table, meta.pk.column
    execute(f"UPDATE {table} SET {', '.join(assignments)} WHERE {pk} = %s", params)


def execute(sql: str, params: Sequence[Any] = ()) -> None:
    """Run a statement whose result nobody reads: now, or with the batch if one is open."""
    pending = _pending.get()
    if pending is not None:
        pending.append((sql, params))
    else:
        _pipelined([(sql, params)])


def as_expression(value: NowPlus) -> ExpressionWrapper[CombinedExpression]:
    from datetime import timedelta

    from django.db.models import DateTimeField, ExpressionWrapper

    return ExpressionWrapper(Now() + timedelta(seconds=value.seconds), output_field=DateTimeField())
