"""The keys' database unreachable while a key is claimed: 503 with Retry-After.

Nothing is mocked. Claim-first mode: the keys live on a database alias of their
own (a router), pointed at a port nobody listens on, so every connection is
refused. Atomic mode: the request's own session is killed with
``pg_terminate_backend`` before the view's transaction reads the key. Either
way the client must get a problem it can retry with the same key, and nothing
may be left behind: no key row, no run of the view, none of its writes.
"""

from __future__ import annotations

import json
import socket

import psycopg
import pytest
from django.db import connection, connections
from django.db.utils import load_backend
from django.test import Client

from sagaflow.models import IdempotencyKey
from tests.idempotency_views import MIDDLEWARE, recorder
from tests.sagaapp.models import AtomicWrite

pytestmark = pytest.mark.django_db(transaction=True)

KEYS_ALIAS = "idempotency_keys_down"


class KeysOnTheirOwnDatabase:
    """Routes ``IdempotencyKey`` to ``KEYS_ALIAS``, everything else to the default."""

    def db_for_write(self, model, **hints):
        return KEYS_ALIAS if model is IdempotencyKey else None

    db_for_read = db_for_write


@pytest.fixture(autouse=True)
def _idempotency_urls(settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, MIDDLEWARE]
    settings.ROOT_URLCONF = "tests.idempotency_views"
    recorder.reset()
    yield
    recorder.reset()


@pytest.fixture
def client_a(django_user_model):
    alice = django_user_model.objects.create_user("alice", password="pw-alice")
    client = Client()
    client.force_login(alice)
    return client


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: nothing listens there


@pytest.fixture
def keys_database_down(transactional_db, settings):
    """The keys' alias points at a closed port; the default database stays up.

    The alias is a connection made here, not a ``DATABASES`` entry: the test
    case then lets it connect (it refuses only configured aliases it was not given).
    """
    params = {**connections.settings["default"], "HOST": "127.0.0.1", "PORT": _closed_port()}
    wrapper = load_backend(params["ENGINE"]).DatabaseWrapper(params, KEYS_ALIAS)
    setattr(connections._connections, KEYS_ALIAS, wrapper)
    settings.DATABASE_ROUTERS = [f"{__name__}.KeysOnTheirOwnDatabase"]
    yield
    settings.DATABASE_ROUTERS = []
    wrapper.close()
    delattr(connections._connections, KEYS_ALIAS)


def post(client, url: str = "/orders/writing/", key: str = "key-1"):
    return client.post(
        url,
        data=json.dumps({"amount": 5}),
        content_type="application/json",
        headers={"Idempotency-Key": key},
    )


def unavailable(response) -> dict:
    assert response.status_code == 503, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert int(response["Retry-After"]) >= 1
    document = response.json()
    assert (document["status"], document["code"]) == (503, "idempotency-store-unavailable")
    assert document["type"] == "urn:sagaflow:problem:idempotency-store-unavailable"
    assert "same Idempotency-Key" in document["detail"]
    return document


def test_claim_first_with_the_keys_database_down_is_503_and_runs_nothing(
    client_a, keys_database_down, settings
):
    unavailable(post(client_a))
    assert recorder.count() == 0
    assert AtomicWrite.objects.count() == 0
    assert IdempotencyKey.objects.using("default").count() == 0
    # The database is back: the client retries with the same key, and it runs once.
    settings.DATABASE_ROUTERS = []
    first = post(client_a)
    assert first.status_code == 201
    assert post(client_a)["Idempotent-Replayed"] == "true"
    assert recorder.count() == 1
    assert AtomicWrite.objects.count() == 1


def _terminate(backend_pid: int) -> None:
    """Kill one session from outside, as a database restart or failover does."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**{**params, "autocommit": True}) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [backend_pid])


def test_atomic_mode_with_the_session_killed_is_503_and_commits_nothing(client_a):
    """The user's session is read first (the scope): that read is what fails."""
    connection.ensure_connection()
    _terminate(connection.connection.info.backend_pid)
    unavailable(post(client_a, "/orders/atomic/"))
    assert recorder.count() == 0
    assert AtomicWrite.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0
    first = post(client_a, "/orders/atomic/")
    assert first.status_code == 201, first.content
    assert first.json()["mode"] == "atomic"
    assert post(client_a, "/orders/atomic/")["Idempotent-Replayed"] == "true"
    assert AtomicWrite.objects.count() == 1


@pytest.fixture
def atomic_requests():
    settings_dict = connections.settings["default"]
    previous = settings_dict["ATOMIC_REQUESTS"]
    settings_dict["ATOMIC_REQUESTS"] = True
    yield
    settings_dict["ATOMIC_REQUESTS"] = previous


def test_atomic_requests_with_the_session_killed_before_the_key_is_read_is_503(
    atomic_requests,
):
    """A scope that needs no database: the key's own read in the view's transaction fails."""
    client = Client()

    def send():
        return client.post(
            "/server/orders/",
            data=json.dumps({"amount": 5}),
            content_type="application/json",
            headers={"Idempotency-Key": "key-1", "X-Tenant": "t1"},
        )

    connection.ensure_connection()
    _terminate(connection.connection.info.backend_pid)
    unavailable(send())
    assert recorder.count() == 0
    assert AtomicWrite.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0
    assert send().status_code == 201
    assert send()["Idempotent-Replayed"] == "true"
    assert (recorder.count(), AtomicWrite.objects.count()) == (1, 1)
