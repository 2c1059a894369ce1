"""The admin as a view-only staff user sees it: everything to read, nothing to run.

Real staff users with only the ``view_*`` permissions, through Django's full
request stack (sessions, CSRF tokens not enforced by the test client, the admin).
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from sagaflow.models import Saga, SagaState
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
