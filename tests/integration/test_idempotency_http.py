"""The Idempotency-Key policy through the full Django request stack, on PostgreSQL.

Committed transactions (``transaction=True``) so claim-first mode runs as in
production; atomic mode is driven by ``@transaction.atomic`` and ATOMIC_REQUESTS.
"""

from __future__ import annotations

import base64
import json

import pytest
from django.core.cache import cache
from django.db import connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext

from sagaflow.exceptions import ConfigurationError
from sagaflow.models import IdempotencyKey, IdempotencyKeyState
from tests.idempotency_support import some_key_expired
from tests.idempotency_views import MIDDLEWARE, recorder
from tests.sagaapp.models import AtomicWrite
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {"amount": 5, "items": [1, 2]}


@pytest.fixture(autouse=True)
def _idempotency_urls(settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, MIDDLEWARE]
    settings.ROOT_URLCONF = "tests.idempotency_views"
    recorder.reset()
    yield
    recorder.reset()


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="pw-bob")


@pytest.fixture
def client_a(alice):
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def atomic_requests():
    settings_dict = connections.settings["default"]
    previous = settings_dict["ATOMIC_REQUESTS"]
    settings_dict["ATOMIC_REQUESTS"] = True
    yield
    settings_dict["ATOMIC_REQUESTS"] = previous


def post(client, url="/orders/", body=BODY, key="key-1", raw=None, content_type=None, **kw):
    headers = kw.pop("headers", {})
    if key is not None:
        headers["Idempotency-Key"] = key
    data = raw if raw is not None else json.dumps(body)
    return client.post(
        url, data=data, content_type=content_type or "application/json", headers=headers, **kw
    )


def problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    document = response.json()
    assert document["code"] == code
    assert document["status"] == status
    assert document["detail"]
    return document


# --- first request, replay, fingerprint ------------------------------------------


def test_first_request_runs_and_replay_returns_the_same_response(client_a, alice):
    first = post(client_a)
    again = post(client_a)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content  # nonce included: not a second execution
    assert again["Content-Type"] == first["Content-Type"] == "application/json"
    assert again["Idempotent-Replayed"] == "true"
    assert not first.has_header("Idempotent-Replayed")
    assert recorder.count() == 1
    row = IdempotencyKey.objects.get()
    assert (row.scope, row.method, row.route, row.key, row.state) == (
        f"user:{alice.pk}",
        "POST",
        "orders/",
        "key-1",
        IdempotencyKeyState.COMPLETED,
    )
    assert first.json()["mode"] == "claim-first"


def test_replay_drops_cookies_and_headers_not_on_the_allow_list(client_a):
    first = post(client_a)
    assert first.cookies["sessionish"].value == "do-not-replay"
    assert first["X-Internal-Token"] == "secret"
    again = post(client_a)
    assert "sessionish" not in again.cookies
    assert not again.has_header("X-Internal-Token")
    assert again["Location"] == first["Location"]
    stored = {name.lower() for name, _ in IdempotencyKey.objects.get().response_headers}
    assert stored == {"content-type", "location"}


def test_json_is_compared_canonically(client_a):
    post(client_a, raw='{"amount": 5, "items": [1, 2]}')
    again = post(client_a, raw='{ "items":[1,2],\n  "amount":5 }')
    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert recorder.count() == 1


@pytest.mark.parametrize(
    "change",
    [
        {"body": {"amount": 6, "items": [1, 2]}},
        {"raw": "amount=5", "content_type": "application/x-www-form-urlencoded"},
        {"url": "/orders/?coupon=1"},
    ],
    ids=["body", "content-type", "query"],
)
def test_same_key_different_request_is_422(client_a, change):
    assert post(client_a).status_code == 201
    problem(post(client_a, **change), 422, "idempotency-key-reused")
    assert recorder.count() == 1


def test_same_key_on_another_resource_of_the_same_route_is_422(client_a):
    assert post(client_a, url="/orders/5/refund/").status_code == 201
    problem(post(client_a, url="/orders/6/refund/"), 422, "idempotency-key-reused")
    assert IdempotencyKey.objects.get().route == "orders/<int:pk>/refund/"


def test_same_key_on_another_route_is_another_key(client_a):
    assert post(client_a, url="/orders/").status_code == 201
    assert post(client_a, url="/orders/cbv/").status_code == 201
    assert recorder.count() == 2


def test_safe_methods_ignore_the_key(client_a):
    for _ in range(2):
        response = client_a.get("/orders/cbv/", headers={"Idempotency-Key": "key-1"})
        assert response.status_code == 201
    assert recorder.count("cbv-get") == 2
    assert IdempotencyKey.objects.count() == 0


def test_without_key_an_optional_view_just_runs(client_a):
    assert post(client_a, key=None).json()["attempt"] is None
    assert post(client_a, key=None).status_code == 201
    assert recorder.count() == 2
    assert IdempotencyKey.objects.count() == 0


# --- 400s: checked before any lookup ---------------------------------------------


def test_missing_key_where_required_is_400_without_queries(django_assert_num_queries):
    with django_assert_num_queries(0):
        response = post(Client(), url="/orders/required/", key=None)
    problem(response, 400, "idempotency-key-missing")
    assert recorder.count() == 0


@pytest.mark.parametrize(
    "key",
    ["", "a" * 256, "has space", "caf\u00e9", 'quo"te', "tab\tkey", "back\\slash"],
    ids=["empty", "too-long", "space", "non-ascii", "quote", "control", "backslash"],
)
def test_invalid_key_is_400_before_any_query(key, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = post(Client(), url="/orders/required/", key=key)
    problem(response, 400, "idempotency-key-invalid")
    assert recorder.count() == 0


def test_structured_field_string_key_is_unquoted(client_a):
    assert post(client_a, key='"key-1"').status_code == 201
    assert post(client_a, key="key-1")["Idempotent-Replayed"] == "true"


def test_anonymous_key_has_no_shared_bucket():
    problem(post(Client()), 400, "idempotency-scope-missing")
    assert recorder.count() == 0
    assert IdempotencyKey.objects.count() == 0


# --- scope ------------------------------------------------------------------------


def test_same_key_by_two_users_runs_twice(client_a, bob):
    client_b = Client()
    client_b.force_login(bob)
    first_a, first_b = post(client_a), post(client_b)
    assert first_a.status_code == first_b.status_code == 201
    assert first_a.json()["call"] != first_b.json()["call"]
    assert recorder.count() == 2
    assert post(client_b).content == first_b.content
    assert post(client_a).content == first_a.content
    assert IdempotencyKey.objects.count() == 2


def test_pluggable_scope_function():
    tenant_1 = post(Client(), url="/orders/tenant/", headers={"X-Tenant": "t1"})
    tenant_2 = post(Client(), url="/orders/tenant/", headers={"X-Tenant": "t2"})
    replay = post(Client(), url="/orders/tenant/", headers={"X-Tenant": "t1"})
    assert tenant_1.status_code == tenant_2.status_code == 201
    assert replay.content == tenant_1.content
    assert recorder.count() == 2
    assert set(IdempotencyKey.objects.values_list("scope", flat=True)) == {"t1", "t2"}


def test_scope_setting_is_read_live(settings):
    settings.SAGAFLOW = {**settings.SAGAFLOW, "IDEMPOTENCY_SCOPE": "tests.missing.scope"}
    with pytest.raises(ConfigurationError, match="IDEMPOTENCY_SCOPE"):
        post(Client())


# --- requests refused before the view ran do not consume the key ---------------------


def test_csrf_rejection_does_not_consume_the_key(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert post(client).status_code == 403
    assert IdempotencyKey.objects.count() == 0
    secret = "a" * 32
    client.cookies["csrftoken"] = secret
    response = post(client, headers={"X-CSRFToken": secret})
    assert response.status_code == 201
    assert recorder.count() == 1


def test_login_required_rejection_does_not_consume_the_key(alice):
    client = Client()
    assert post(client, url="/orders/private/").status_code == 302
    assert IdempotencyKey.objects.count() == 0
    client.force_login(alice)
    assert post(client, url="/orders/private/").status_code == 201


def test_body_too_large_does_not_consume_the_key(client_a, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    assert post(client_a, body={"amount": 5, "pad": "x" * 200}).status_code == 400
    assert IdempotencyKey.objects.count() == 0
    assert recorder.count() == 0
    assert post(client_a).status_code == 201


def test_malformed_json_does_not_consume_the_key(client_a):
    problem(post(client_a, raw='{"amount": 5'), 400, "request-body-malformed")
    assert IdempotencyKey.objects.count() == 0
    assert post(client_a).status_code == 201


# --- 5xx and exceptions release the key ---------------------------------------------


def test_5xx_releases_the_key(client_a):
    recorder.statuses = [503]
    assert post(client_a).status_code == 503
    assert IdempotencyKey.objects.count() == 0
    retried = post(client_a)
    assert retried.status_code == 201
    assert not retried.has_header("Idempotent-Replayed")
    assert recorder.count() == 2


def test_exception_in_view_releases_the_key(client_a):
    recorder.raise_next = True
    client_a.raise_request_exception = False
    assert post(client_a).status_code == 500
    assert IdempotencyKey.objects.count() == 0
    assert post(client_a).status_code == 201


def test_4xx_is_stored_and_replayed(client_a):
    recorder.statuses = [409]
    first = post(client_a)
    assert first.status_code == 409
    assert post(client_a).content == first.content
    assert recorder.count() == 1


# --- atomic mode --------------------------------------------------------------------


def test_atomic_view_commits_key_and_writes_together(client_a):
    first = post(client_a, url="/orders/atomic/")
    assert first.json()["mode"] == "atomic"
    assert post(client_a, url="/orders/atomic/").content == first.content
    assert AtomicWrite.objects.count() == 1
    assert IdempotencyKey.objects.get().state == IdempotencyKeyState.COMPLETED


def test_atomic_requests_5xx_rolls_back_writes_and_key(client_a, atomic_requests):
    recorder.statuses = [500]
    assert post(client_a, url="/orders/writing/").status_code == 500
    assert AtomicWrite.objects.count() == 0
    assert IdempotencyKey.objects.count() == 0
    ok = post(client_a, url="/orders/writing/")
    assert ok.json()["mode"] == "atomic"
    assert post(client_a, url="/orders/writing/").content == ok.content
    assert AtomicWrite.objects.count() == 1


def test_without_a_transaction_the_claim_commits_first(client_a):
    assert post(client_a, url="/orders/writing/").json()["mode"] == "claim-first"


# --- TTL, streaming, class-based views, DRF, configuration -----------------------------


def test_expired_key_can_be_used_again(client_a):
    first = post(client_a, url="/orders/short/")
    assert first.status_code == 201
    wait_until(some_key_expired, timeout=15, what="the key to expire")
    again = post(client_a, url="/orders/short/", body={"amount": 99})
    assert again.status_code == 201
    assert not again.has_header("Idempotent-Replayed")
    assert recorder.count() == 2
    assert IdempotencyKey.objects.get().attempts == 1


def test_streaming_response_is_not_stored_and_not_rerun(client_a):
    first = post(client_a, url="/orders/stream/")
    assert b"".join(first.streaming_content) == b"part1,part2"
    problem(post(client_a, url="/orders/stream/"), 409, "idempotency-response-not-stored")
    assert recorder.count() == 1


def test_class_based_view(client_a):
    first = post(client_a, url="/orders/cbv/")
    assert post(client_a, url="/orders/cbv/").content == first.content
    assert recorder.count("cbv") == 1


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_drf_view_is_scoped_to_the_drf_authenticated_user(alice):
    client = Client()
    assert post(client, url="/drf/orders/", headers=_basic("alice", "wrong")).status_code == 401
    assert IdempotencyKey.objects.count() == 0
    first = post(client, url="/drf/orders/", headers=_basic("alice", "pw-alice"))
    assert first.status_code == 201
    assert first.json() == {"call": 1, "user": "alice"}
    again = post(client, url="/drf/orders/", headers=_basic("alice", "pw-alice"))
    assert again.content == first.content
    assert again["Idempotent-Replayed"] == "true"
    assert IdempotencyKey.objects.get().scope == f"user:{alice.pk}"


def test_drf_validation_error_releases_the_key(alice):
    client = Client()
    bad = post(client, url="/drf/orders/", body={"amount": 0}, headers=_basic("alice", "pw-alice"))
    assert bad.status_code == 400
    assert IdempotencyKey.objects.count() == 0


def test_drf_function_view(client_a):
    first = post(client_a, url="/drf/function/")
    assert first.status_code == 201
    assert first.json()["data"] == BODY
    assert post(client_a, url="/drf/function/").content == first.content
    assert recorder.count("drf-function") == 1


def test_decorated_view_without_the_middleware_fails_loudly(client_a, settings):
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != MIDDLEWARE]
    with pytest.raises(ConfigurationError, match="IdempotencyMiddleware"):
        post(client_a)


# --- the optional replay cache (idempotency/cache.py) ------------------------------------


@pytest.fixture
def replay_cache(settings):
    settings.SAGAFLOW = {**getattr(settings, "SAGAFLOW", {}), "IDEMPOTENCY_REPLAY_CACHE": "default"}
    cache.clear()
    yield
    cache.clear()


def key_queries(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "sagaflow_idempotencykey" in q["sql"]]


@pytest.mark.parametrize("url", ["/orders/", "/orders/atomic/"])
def test_a_cached_replay_does_not_read_its_key(client_a, replay_cache, url):
    first = post(client_a, url)
    read = post(client_a, url)  # read from the database, and kept
    with CaptureQueriesContext(connection) as queries:
        cached = post(client_a, url)
        reused = post(client_a, url, body={"amount": 6})
    assert key_queries(queries) == []
    assert first.status_code == read.status_code == cached.status_code == 201
    assert cached.content == read.content == first.content
    assert cached["Idempotent-Replayed"] == "true"
    problem(reused, 422, "idempotency-key-reused")
    assert recorder.count() == 1


def test_without_the_replay_cache_every_replay_reads_its_key(client_a):
    post(client_a)
    post(client_a)
    with CaptureQueriesContext(connection) as queries:
        assert post(client_a)["Idempotent-Replayed"] == "true"
    assert key_queries(queries)  # at least one read (one on PostgreSQL)


def test_a_deleted_key_runs_again_once_its_cached_copy_is_gone(client_a, replay_cache):
    post(client_a)
    post(client_a)  # cached
    IdempotencyKey.objects.all().delete()
    assert post(client_a)["Idempotent-Replayed"] == "true"  # the copy, for its lifetime
    cache.clear()  # what IDEMPOTENCY_REPLAY_CACHE_SECONDS does in time
    again = post(client_a)
    assert again.status_code == 201
    assert not again.has_header("Idempotent-Replayed")
    assert recorder.count() == 2
