"""Races, crashes, ASGI and retention of idempotency keys, on real PostgreSQL.

Concurrency uses real threads (one database connection each), a barrier and
committed transactions; waits are on conditions, never fixed sleeps.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import connections, transaction
from django.db.models.functions import Now
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext

from sagaflow import tasks
from sagaflow.idempotency import store
from sagaflow.models import IdempotencyKey, IdempotencyKeyState
from sagaflow.ops.janitor import clean
from sagaflow.testing import armed_fault
from tests.idempotency_support import some_lease_lapsed
from tests.idempotency_views import MIDDLEWARE, recorder
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

BODY = json.dumps({"amount": 5})


@pytest.fixture(autouse=True)
def _idempotency_urls(settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, MIDDLEWARE]
    settings.ROOT_URLCONF = "tests.idempotency_views"
    settings.SAGAFLOW = {**settings.SAGAFLOW, "IDEMPOTENCY_LEASE": 0.5}
    recorder.reset()
    yield
    recorder.reset()


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw")


@pytest.fixture
def client_a(alice):
    client = Client(raise_request_exception=False)
    client.force_login(alice)
    return client


@pytest.fixture
def atomic_requests():
    settings_dict = connections.settings["default"]
    previous = settings_dict["ATOMIC_REQUESTS"]
    settings_dict["ATOMIC_REQUESTS"] = True
    yield
    settings_dict["ATOMIC_REQUESTS"] = previous


def post(client, url="/orders/", key="key-1"):
    return client.post(
        url, data=BODY, content_type="application/json", headers={"Idempotency-Key": key}
    )


# --- 20 identical requests at once ------------------------------------------------------


@pytest.mark.parametrize("mode", ["claim-first", "atomic"])
def test_twenty_concurrent_identical_requests_run_the_view_once(client_a, mode, request):
    if mode == "atomic":
        request.getfixturevalue("atomic_requests")
    threads_n = 20
    recorder.gate = threading.Event()
    barrier = threading.Barrier(threads_n)
    results: list = []
    results_lock = threading.Lock()

    def one_request() -> None:
        client = Client(raise_request_exception=False)
        client.cookies.update(client_a.cookies)
        try:
            barrier.wait(timeout=30)
            response = post(client, url="/orders/writing/")
            with results_lock:
                results.append(response)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one_request) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    # The one request that won is held inside its view until every other has
    # answered, so all of them really overlapped with it.
    wait_until(
        lambda: len(results) >= threads_n - 1,
        timeout=60,
        what=f"{threads_n - 1} of {threads_n} requests to be answered",
    )
    recorder.gate.set()
    for thread in threads:
        thread.join(timeout=60)

    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] + [409] * (threads_n - 1)
    assert recorder.count() == 1
    for response in results:
        if response.status_code == 409:
            assert response["Retry-After"] == "1"
            assert response.json()["code"] == "idempotency-key-in-flight"
    winner = next(r for r in results if r.status_code == 201)
    assert winner.json()["mode"] == mode
    replay = post(client_a, url="/orders/writing/")
    assert replay.content == winner.content
    assert replay["Idempotent-Replayed"] == "true"
    assert recorder.count() == 1
    from tests.sagaapp.models import AtomicWrite

    assert AtomicWrite.objects.count() == 1


def test_concurrent_requests_after_completion_all_replay(client_a):
    first = post(client_a)
    threads_n = 10
    barrier = threading.Barrier(threads_n)
    results: list = []
    lock = threading.Lock()

    def one_request() -> None:
        client = Client()
        client.cookies.update(client_a.cookies)
        try:
            barrier.wait(timeout=30)
            response = post(client)
            with lock:
                results.append(response)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one_request) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [r.status_code for r in results] == [201] * threads_n
    assert all(r.content == first.content for r in results)
    assert recorder.count() == 1


# --- a crashed in-flight request is taken over after its lease ----------------------------


def test_crash_after_claim_is_taken_over_after_the_lease(client_a):
    with armed_fault("idempotency.after_claim"):
        assert post(client_a).status_code == 500  # FaultInjected: the "process died"
    row = IdempotencyKey.objects.get()
    assert row.state == IdempotencyKeyState.IN_FLIGHT
    busy = post(client_a)
    assert busy.status_code == 409
    assert busy["Retry-After"] == "1"
    assert recorder.count() == 0
    wait_until(some_lease_lapsed, timeout=15, what="the claim's lease to lapse")
    taken_over = post(client_a)
    assert taken_over.status_code == 201
    assert taken_over.json()["attempt"] == 2
    assert recorder.count() == 1
    assert post(client_a).content == taken_over.content


def test_crash_after_view_reruns_it_with_the_attempt_number(client_a):
    with armed_fault("idempotency.after_view"):
        assert post(client_a).status_code == 500
    assert recorder.count() == 1  # the view ran; its response was lost
    assert post(client_a).status_code == 409
    wait_until(some_lease_lapsed, timeout=15, what="the claim's lease to lapse")
    second = post(client_a)
    assert second.json()["attempt"] == 2
    assert recorder.count() == 2
    assert post(client_a).content == second.content


def test_crash_in_atomic_mode_rolls_back_the_claim(client_a):
    with armed_fault("idempotency.after_view"):
        assert post(client_a, url="/orders/atomic/").status_code == 500
    assert IdempotencyKey.objects.count() == 0
    from tests.sagaapp.models import AtomicWrite

    assert AtomicWrite.objects.count() == 0
    assert post(client_a, url="/orders/atomic/").json()["attempt"] == 1


def test_a_lapsed_claim_is_not_taken_over_by_a_different_request(client_a):
    with armed_fault("idempotency.after_claim"):
        post(client_a)
    wait_until(some_lease_lapsed, timeout=15, what="the claim's lease to lapse")
    other = client_a.post(
        "/orders/", data='{"amount": 6}', content_type="application/json",
        headers={"Idempotency-Key": "key-1"},
    )  # fmt: skip
    assert other.status_code == 422
    assert recorder.count() == 0


def test_late_holder_cannot_record_after_a_takeover(alice):
    identity = store.Identity(f"user:{alice.pk}", "POST", "orders/", "k")
    using = store.alias()
    with transaction.atomic():
        late = store.claim(identity, "fp", lease=0, ttl=60, using=using)
    with transaction.atomic():
        current = store.claim(identity, "fp", lease=60, ttl=60, using=using)
    assert isinstance(late, store.Claimed) and isinstance(current, store.Claimed)
    assert current.attempt == 2
    assert store.complete(late, status=201, headers=[], body=b"late") is False
    assert store.release(late) is False
    assert store.complete(current, status=201, headers=[], body=b"current") is True
    assert bytes(IdempotencyKey.objects.get().response_body) == b"current"


def test_atomic_mode_takes_over_a_lapsed_claim_in_its_own_transaction(alice):
    identity = store.Identity(f"user:{alice.pk}", "POST", "orders/", "k")
    using = store.alias()
    dead = store.claim(identity, "fp", lease=0, ttl=60, using=using)  # its holder died
    with transaction.atomic():
        other = store.reserve(identity, "other", lease=60, ttl=60, using=using)
        assert isinstance(other, store.Existing)  # another request: 422, never taken
        taken = store.reserve(identity, "fp", lease=60, ttl=60, using=using)
        assert isinstance(taken, store.Reserved) and taken.attempt == 2
        assert store.complete(taken, status=201, headers=[], body=b"second")
    assert store.complete(dead, status=201, headers=[], body=b"late") is False
    row = IdempotencyKey.objects.get()
    assert (row.state, row.attempts, bytes(row.response_body)) == ("completed", 2, b"second")


def test_atomic_mode_loses_to_a_late_holder_that_recorded_first(alice):
    identity = store.Identity(f"user:{alice.pk}", "POST", "orders/", "k")
    using = store.alias()
    late = store.claim(identity, "fp", lease=0, ttl=60, using=using)
    with transaction.atomic():
        taken = store.reserve(identity, "fp", lease=60, ttl=60, using=using)
        assert isinstance(taken, store.Reserved)

        def record_late() -> None:
            try:
                assert store.complete(late, status=201, headers=[], body=b"late")
            finally:
                connections.close_all()

        thread = threading.Thread(target=record_late)
        thread.start()
        thread.join(timeout=30)
        # Nothing of ours was written, so the late holder was not blocked, and its
        # response stands: ours is refused, and the caller rolls its view back.
        assert store.complete(taken, status=201, headers=[], body=b"ours") is False
    row = IdempotencyKey.objects.get()
    assert (row.state, bytes(row.response_body)) == ("completed", b"late")


def test_reserve_never_takes_a_live_key_and_answers_busy_to_a_concurrent_one(alice):
    identity = store.Identity(f"user:{alice.pk}", "POST", "orders/", "k")
    using = store.alias()
    outcomes: list = []
    with transaction.atomic():
        mine = store.reserve(identity, "fp", lease=60, ttl=60, using=using)
        assert isinstance(mine, store.Reserved)

        def concurrent() -> None:
            try:
                with transaction.atomic():
                    outcomes.append(store.reserve(identity, "fp", lease=60, ttl=60, using=using))
                outcomes.append(store.claim(identity, "fp", lease=60, ttl=60, using=using))
            finally:
                connections.close_all()

        thread = threading.Thread(target=concurrent)
        thread.start()
        thread.join(timeout=30)
    assert [type(o) for o in outcomes] == [store.Busy, store.Busy]
    assert IdempotencyKey.objects.count() == 0


def _key_statements(call) -> list[str]:
    """The statements ``call`` sent that touch the keys' table, or open/close a
    transaction, by their first word."""
    with CaptureQueriesContext(connections["default"]) as captured:
        call()
    verbs = [(q["sql"].split()[0].upper(), q["sql"]) for q in captured.captured_queries]
    return [
        verb
        for verb, sql in verbs
        if "sagaflow_idempotencykey" in sql or verb in ("BEGIN", "COMMIT")
    ]


def test_statements_per_request(client_a):
    # Atomic mode: one read (with the no-wait lock) before the view, one write of the
    # completed row after it, inside the view's own transaction.
    assert _key_statements(lambda: post(client_a, url="/orders/atomic/")) == [
        "BEGIN", "SELECT", "INSERT", "COMMIT",
    ]  # fmt: skip
    # A replay without a transaction around the view: one indexed read.
    post(client_a, url="/orders/writing/")
    assert _key_statements(lambda: post(client_a, url="/orders/writing/")) == ["SELECT"]
    # Claim-first, new key: the read finds nothing, the claim commits by itself
    # (no BEGIN/COMMIT around it), the view runs, the response is recorded.
    assert _key_statements(lambda: post(client_a, url="/orders/writing/", key="key-2")) == [
        "SELECT", "INSERT", "UPDATE",
    ]  # fmt: skip


# --- ASGI ----------------------------------------------------------------------------------


def test_asgi_async_view(alice):
    client = AsyncClient()
    client.force_login(alice)

    def apost():
        return async_to_sync(client.post)(
            "/async/orders/", data=BODY, content_type="application/json",
            headers={"Idempotency-Key": "key-1"},
        )  # fmt: skip

    first = apost()
    again = apost()
    assert first.status_code == again.status_code == 201
    assert first.json()["mode"] == "claim-first"
    assert again.content == first.content
    assert again["Idempotent-Replayed"] == "true"
    assert recorder.count("async") == 1


def test_asgi_sync_view_and_errors(alice):
    client = AsyncClient()
    client.force_login(alice)

    def apost(key):
        return async_to_sync(client.post)(
            "/orders/", data=BODY, content_type="application/json",
            headers={"Idempotency-Key": key},
        )  # fmt: skip

    first = apost("key-1")
    assert first.status_code == 201
    assert apost("key-1").content == first.content
    assert apost("bad key")["Content-Type"] == "application/problem+json"
    assert recorder.count("orders") == 1


def test_middleware_is_async_under_asgi():
    from asgiref.sync import iscoroutinefunction

    from sagaflow.middleware import IdempotencyMiddleware

    async def get_response(request):  # pragma: no cover - never called
        return None

    assert iscoroutinefunction(IdempotencyMiddleware(get_response))
    assert not iscoroutinefunction(IdempotencyMiddleware(lambda request: None))


# --- retention -------------------------------------------------------------------------------


def _row(key: str, *, expired: bool, state: str, lease_live: bool) -> None:
    past, future = Now() - timedelta(hours=1), Now() + timedelta(hours=1)
    IdempotencyKey.objects.create(
        scope="user:1",
        method="POST",
        route="orders/",
        key=key,
        fingerprint="fp",
        state=state,
        locked_until=(future if lease_live else past) if state == "in_flight" else None,
        expires_at=past if expired else future,
        created_at=Now(),
    )


def test_janitor_deletes_expired_keys_in_batches_never_live_claims(settings):
    settings.SAGAFLOW = {**settings.SAGAFLOW, "JANITOR_BATCH_SIZE": 2}
    for i in range(5):
        _row(f"old-{i}", expired=True, state="completed", lease_live=False)
    _row("abandoned", expired=True, state="in_flight", lease_live=False)
    _row("running", expired=True, state="in_flight", lease_live=True)
    _row("fresh", expired=False, state="completed", lease_live=False)
    _row("fresh-running", expired=False, state="in_flight", lease_live=True)
    _count_deletes.n = 0
    with connections["default"].execute_wrapper(_count_deletes):
        assert clean()["idempotency_keys"] == 6
    assert _count_deletes.n == 4  # 2 + 2 + 2 + a last, empty batch
    remaining = set(IdempotencyKey.objects.values_list("key", flat=True))
    assert remaining == {"running", "fresh", "fresh-running"}
    assert tasks.janitor()["idempotency_keys"] == 0


def _count_deletes(execute, sql, params, many, context):
    if sql.lstrip().startswith('DELETE FROM "sagaflow_idempotencykey"'):
        _count_deletes.n += 1
    return execute(sql, params, many, context)
