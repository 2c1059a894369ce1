"""The admin as a view-only staff user sees it: everything to read, nothing to run.

Real staff users with only the ``view_*`` permissions, through Django's full
request stack (sessions, CSRF tokens not enforced by the test client, the admin).
"""

from __future__ import annotations

import re

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.db import transaction
from django.test import Client

import sagaflow
from sagaflow.models import InboxMessage, OutboxEvent, Saga, SagaState
from sagaflow.testing import run_inline
from tests.sagaapp import sagas

pytestmark = pytest.mark.django_db

SAGAS = "/admin/sagaflow/saga/"
EVENTS = "/admin/sagaflow/outboxevent/"
INBOX = "/admin/sagaflow/inboxmessage/"
KEYS = "/admin/sagaflow/idempotencykey/"


def viewer(django_user_model, *codenames: str) -> Client:
    """A staff user holding exactly the given permissions, logged in."""
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def failed_saga() -> Saga:
    saga = run_inline(sagas.chain, {"fail": {"s2": "abort"}, "comp_fail": {"s1": "always"}})
    assert saga.state == SagaState.FAILED
    return saga


def forge(client: Client, url: str, action: str, *pks) -> int:
    response = client.post(url, {"action": action, "_selected_action": [str(pk) for pk in pks]})
    return response.status_code


def test_a_view_only_user_sees_a_sagas_steps(django_user_model):
    saga = failed_saga()
    client = viewer(django_user_model, "view_saga")
    page = client.get(f"{SAGAS}{saga.pk}/change/")
    assert page.status_code == 200
    body = page.content.decode()
    assert 'name="steps-TOTAL_FORMS"' in body  # the inline is on the page
    names = re.findall(r'<td class="field-name">\s*<p>(\w+)</p>', body)
    assert names == list(saga.steps.order_by("index").values_list("name", flat=True))
    assert len(names) >= 3
    assert "forward #1</td><td>aborted" in body  # s2's timeline
    # Read-only all the same: no delete box, no save button.
    assert "_save" not in body and "-DELETE" not in body


def test_without_view_saga_the_page_is_refused(django_user_model):
    saga = failed_saga()
    client = viewer(django_user_model)
    assert client.get(f"{SAGAS}{saga.pk}/change/").status_code == 403


@pytest.mark.parametrize("action", ["retry_sagas", "compensate_sagas", "delete_selected"])
def test_a_forged_saga_action_by_a_view_only_user_is_403(django_user_model, action):
    saga = failed_saga()
    client = viewer(django_user_model, "view_saga")
    assert forge(client, SAGAS, action, saga.pk) == 403
    saga.refresh_from_db()
    assert saga.state == SagaState.FAILED
    assert Saga.objects.count() == 1
    assert not LogEntry.objects.exists()


def test_a_forged_requeue_of_dead_events_by_a_view_only_user_is_403(django_user_model):
    with transaction.atomic():
        event_id = sagaflow.publish("admin.test", {"n": 1})
    OutboxEvent.objects.filter(pk=event_id).update(state="dead", attempts=25)
    client = viewer(django_user_model, "view_outboxevent")
    assert forge(client, EVENTS, "requeue", event_id) == 403
    assert OutboxEvent.objects.get(pk=event_id).state == "dead"
    assert not LogEntry.objects.exists()


def test_a_forged_inbox_retry_and_key_delete_by_a_view_only_user_are_403(django_user_model):
    client = viewer(django_user_model, "view_inboxmessage", "view_idempotencykey")
    assert forge(client, INBOX, "requeue", 1) == 403
    assert forge(client, KEYS, "delete_selected", 1) == 403
    assert InboxMessage.objects.count() == 0


def test_an_action_the_user_may_run_still_runs(django_user_model):
    saga = failed_saga()
    client = viewer(django_user_model, "view_saga", "retry_saga")
    response = client.post(
        SAGAS, {"action": "retry_sagas", "_selected_action": [str(saga.pk)]}, follow=True
    )
    assert response.status_code == 200
    assert "1 saga retried." in response.content.decode()
    # Posting the changelist without an action (a search, a filter) is no forgery.
    assert client.post(SAGAS, {"index": "0", "action": ["", ""]}).status_code in (200, 302)
