"""The saga admin: what on-call people see, and the repair actions' permissions."""

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.test import Client

from sagaflow.models import Saga, SagaState
from sagaflow.testing import run_inline
from tests.sagaapp import sagas

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/sagaflow/saga/"


def failed_saga() -> Saga:
    saga = run_inline(sagas.chain, {"fail": {"s2": "abort"}, "comp_fail": {"s1": "always"}})
    assert saga.state == SagaState.FAILED
    return saga


def act(client, action, *sagas_):
    return client.post(
        CHANGELIST,
        {"action": action, "_selected_action": [str(s.pk) for s in sagas_]},
        follow=True,
    )


@pytest.fixture
def staff(django_user_model):
    """A staff user who may view sagas but holds no repair permission."""
    user = django_user_model.objects.create_user("oncall", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_saga"))
    client = Client()
    client.force_login(user)
    return user, client


def test_changelist_and_detail_render_escaped(admin_client):
    saga = run_inline(sagas.chain, {"fail": {"s1": "abort"}, "note": "<script>x</script>"})
    listing = admin_client.get(f"{CHANGELIST}?state__exact=compensated")
    assert listing.status_code == 200 and str(saga.id) in listing.content.decode()
    detail = admin_client.get(f"{CHANGELIST}{saga.pk}/change/")
    body = detail.content.decode()
    assert detail.status_code == 200
    assert "Abort: s1 refused" in body and "<script>x</script>" not in body
    assert "&lt;script&gt;x&lt;/script&gt;" in body
    assert "flowchart LR" in body and "class s0 undone" in body
    # s1's timeline: the forward attempt, then its compensation, each with outcome.
    assert "forward #1</td><td>aborted" in body and "compensate #1</td><td>succeeded" in body
    search = admin_client.get(f"{CHANGELIST}?q={saga.correlation_id}")
    assert str(saga.id) in search.content.decode()


def test_stuck_filter_lists_live_sagas_without_progress(admin_client, settings):
    live = run_inline(sagas.chain, {"fail": {"s0": "abort"}})
    Saga.objects.filter(pk=live.pk).update(state=SagaState.RUNNING)
    done = run_inline(sagas.chain, {})
    settings.SAGAFLOW = {**settings.SAGAFLOW, "STUCK_AFTER": 0}
    body = admin_client.get(f"{CHANGELIST}?stuck=yes").content.decode()
    assert str(live.id) in body and str(done.id) not in body


def test_retry_action_resumes_a_failed_saga_and_is_logged(admin_client, admin_user):
    saga = failed_saga()
    page = act(admin_client, "retry_sagas", saga)
    assert "1 saga retried." in page.content.decode()
    saga.refresh_from_db()
    assert saga.state == SagaState.COMPENSATING
    entry = LogEntry.objects.get(object_id=str(saga.pk))
    assert entry.user == admin_user
    assert "retried from the admin: compensation of step 's1' retried" in entry.get_change_message()


def test_actions_report_refusals_with_their_reason(admin_client):
    completed = run_inline(sagas.chain, {})
    failed = failed_saga()
    body = act(admin_client, "retry_sagas", completed, failed).content.decode()
    assert "1 saga retried." in body
    assert f"1 saga refused: Saga {completed.id} is completed: a finished run" in body
    body = act(admin_client, "compensate_sagas", completed).content.decode()
    assert "only a running saga can be compensated" in body
    assert LogEntry.objects.count() == 1


def test_staff_without_permission_neither_sees_nor_forges_the_actions(staff):
    user, client = staff
    saga = failed_saga()
    listing = client.get(CHANGELIST).content.decode()
    assert "retry_sagas" not in listing and "compensate_sagas" not in listing
    for action in ("retry_sagas", "compensate_sagas"):
        act(client, action, saga)
    saga.refresh_from_db()
    assert saga.state == SagaState.FAILED
    assert not LogEntry.objects.exists()
    user.user_permissions.add(Permission.objects.get(codename="retry_saga"))
    client.force_login(user)
    assert "retry_sagas" in client.get(CHANGELIST).content.decode()
    assert "1 saga retried." in act(client, "retry_sagas", saga).content.decode()


def test_outbox_changelist_shows_the_backlog_and_requeues_dead_events(admin_client, staff):
    from django.db import transaction

    import sagaflow
    from sagaflow.models import OutboxEvent

    with transaction.atomic():
        ids = [sagaflow.publish("admin.test", {"n": i}) for i in range(3)]
    OutboxEvent.objects.filter(pk=ids[0]).update(state="dead", attempts=25, last_error="boom")
    body = admin_client.get("/admin/sagaflow/outboxevent/").content.decode()
    assert "<strong>2</strong> pending" in body and "<strong>1</strong> dead" in body
    user, client = staff
    user.user_permissions.add(Permission.objects.get(codename="view_outboxevent"))
    forged = client.post(
        "/admin/sagaflow/outboxevent/",
        {"action": "requeue", "_selected_action": [str(ids[0])]},
        follow=True,
    )
    assert forged.status_code == 403
    assert OutboxEvent.objects.get(pk=ids[0]).state == "dead"
    page = admin_client.post(
        "/admin/sagaflow/outboxevent/",
        {"action": "requeue", "_selected_action": [str(i) for i in ids]},
        follow=True,
    )
    assert "1 dead event re-queued." in page.content.decode()
    assert OutboxEvent.objects.get(pk=ids[0]).state == "pending"


def test_idempotency_key_shows_body_size_not_content(admin_client):
    from django.utils import timezone

    from sagaflow.models import IdempotencyKey

    key = IdempotencyKey.objects.create(
        scope="user:1",
        method="POST",
        route="orders/",
        key="k-1",
        fingerprint="f" * 64,
        state="completed",
        expires_at=timezone.now(),
        created_at=timezone.now(),
        response_status=201,
        response_body=b'{"card": "4242-secret"}',
    )
    body = admin_client.get(f"/admin/sagaflow/idempotencykey/{key.pk}/change/").content.decode()
    assert "23 bytes" in body and "f" * 64 in body and "4242-secret" not in body


def test_bulk_retry_of_a_thousand_sagas_works_in_bounded_batches(
    admin_client, django_capture_on_commit_callbacks
):
    from sagaflow.testing import captured_dispatches
    from tests.factories import SagaFactory

    runs = SagaFactory.create_batch(1200, failed_in_compensation=True)
    SagaFactory.create_batch(3, completed=True)
    with captured_dispatches() as sent, django_capture_on_commit_callbacks(execute=True):
        page = admin_client.post(
            CHANGELIST,
            {
                "action": "retry_sagas",
                "select_across": "1",
                "index": "0",
                "_selected_action": [str(runs[0].pk)],
            },
            follow=True,
        )
    body = page.content.decode()
    assert "1200 sagas retried." in body and "3 sagas refused" in body
    assert len(sent) == 1200 and {phase for _, phase in sent} == {"compensate"}
    assert Saga.objects.filter(state=SagaState.COMPENSATING).count() == 1200
    assert LogEntry.objects.count() == 1200
