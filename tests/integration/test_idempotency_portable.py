"""Every HTTP rule again, served by the portable queries that SQLite uses.

They run here on PostgreSQL with the PostgreSQL statements switched off, so the
ORM implementation is held to the same rules as the one production uses.
"""

import pytest

from sagaflow.idempotency import store as idempotency_store
from tests.integration.test_idempotency_http import *  # noqa: F403 - rerun every rule
from tests.integration.test_idempotency_http import _idempotency_urls  # noqa: F401


@pytest.fixture(autouse=True)
def _portable_queries(monkeypatch):
    monkeypatch.setattr(idempotency_store, "_is_postgresql", lambda using: False)
