"""The engine's plain-SQL layer behaves like Django's cursor when the session is lost."""

import uuid

import psycopg
import pytest
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from sagaflow.models import Saga
from sagaflow.saga import rows
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_lost_session_raises_djangos_error_and_is_replaced_between_tasks():
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    params = connection.get_connection_params()
    with psycopg.connect(**{**params, "autocommit": True}) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        wait_until(
            lambda: (
                not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
            ),
            what="the session to end",
        )

    # Django's exception types, so that Celery's autoretry_for and the health check see it.
    with pytest.raises((OperationalError, InterfaceError)):
        rows.select(Saga, "id = %s", [uuid.uuid4()])
    assert connection.errors_occurred

    close_old_connections()  # what demo_shop/celery.py does between tasks
    assert rows.select(Saga, "id = %s", [uuid.uuid4()]) == []
