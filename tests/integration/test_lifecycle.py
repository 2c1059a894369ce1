"""A run's whole life on real PostgreSQL: ``resolve`` for a failed run (audited and
permission-checked in the admin, the command and the API), and ``SAGA_RETENTION``,
which deletes finished runs in batches and keeps those that need a person.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import psycopg
import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY

from sagaflow import ops
from sagaflow.exceptions import ActionRefused
from sagaflow.models import Saga, SagaState, SagaStep
from sagaflow.ops import health, janitor
from sagaflow.saga import retention
from sagaflow.testing import captured_dispatches, run_inline
from tests.sagaapp import sagas

CHANGELIST = "/admin/sagaflow/saga/"


def failed() -> Saga:
    saga = run_inline(sagas.chain, {"fail": {"s2": "abort"}, "comp_fail": {"s1": "always"}})
    assert saga.state == SagaState.FAILED
    return saga


@pytest.fixture
def oncall(django_user_model):
    """A staff user who may view sagas but not resolve them (yet)."""
    user = django_user_model.objects.create_user("oncall", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_saga"))
    client = Client()
    client.force_login(user)
    return user, client


def grant(user, client, codename: str) -> None:
    user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(type(user).objects.get(pk=user.pk))  # drop the permission cache


# --- resolve ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_resolve_records_who_why_and_when_and_ends_the_alert(capsys, django_user_model):
    saga = failed()
    assert health.check().needs_attention
    alice = django_user_model.objects.create_user("alice")
    outcome = ops.resolve(saga.pk, note="refunded by hand, ticket 4711", user=alice)
    assert outcome == "resolved by alice: refunded by hand, ticket 4711"
    saga.refresh_from_db()
    assert saga.state == SagaState.FAILED  # what happened stays as it was
    assert saga.resolved_by == "alice" and saga.resolution_note == "refunded by hand, ticket 4711"
    assert timezone.now() - saga.resolved_at < timedelta(minutes=1)
    report = health.check()
    assert report.failed_unresolved == 0 and not report.needs_attention
    assert report.sagas_by_state == {"failed": 1}
    assert REGISTRY.get_sample_value("sagaflow_sagas_needing_attention", {"reason": "failed"}) == 0
    with pytest.raises(ActionRefused, match="was resolved already, by alice"):
        ops.resolve(saga.pk, note="again")
    with pytest.raises(ActionRefused, match="a resolved run is not retried"):
        ops.retry(saga.pk)


@pytest.mark.django_db
def test_only_a_failed_run_with_a_note_can_be_resolved():
    done = run_inline(sagas.chain, {})
    with pytest.raises(ActionRefused, match="is completed: only a failed run can be resolved"):
        ops.resolve(done.pk, note="nothing to do")
    with captured_dispatches():
        live = sagas.chain.start({})
    with pytest.raises(ActionRefused, match="is running: only a failed run"):
        ops.resolve(live.pk, note="x")
    saga = failed()
    for note in ("", "   ", None):
        with pytest.raises(ActionRefused, match="A note saying why"):
            ops.resolve(saga.pk, note=note)
    with pytest.raises(ActionRefused, match="There is no saga with id"):
        ops.resolve("00000000-0000-0000-0000-000000000000", note="x")
    assert not Saga.objects.filter(resolved_at__isnull=False).exists()
    assert REGISTRY.get_sample_value("sagaflow_sagas_needing_attention", {"reason": "failed"}) == 1


@pytest.mark.django_db
def test_resolve_command(capsys, django_user_model):
    saga, done = failed(), run_inline(sagas.chain, {})
    django_user_model.objects.create_user("bob")
    call_command(
        "sagaflow", "resolve", str(saga.pk), "--note", "voided at the PSP", "--user", "bob"
    )
    assert f"{saga.pk}: resolved by bob: voided at the PSP" in capsys.readouterr().out
    saga.refresh_from_db()
    assert (saga.resolved_by, saga.resolution_note) == ("bob", "voided at the PSP")
    with pytest.raises(CommandError, match="1 of 1 refused") as info:
        call_command("sagaflow", "resolve", str(done.pk), "--note", "x")
    assert info.value.returncode == 2
    with pytest.raises(CommandError, match="--note"):
        call_command("sagaflow", "resolve", str(saga.pk))
    with pytest.raises(CommandError, match="There is no user 'nobody'"):
        call_command("sagaflow", "resolve", str(saga.pk), "--note", "x", "--user", "nobody")


@pytest.mark.django_db
def test_admin_resolve_needs_its_own_permission(oncall):
    user, client = oncall
    saga = failed()
    grant(user, client, "retry_saga")  # another repair permission is not enough
    page = f"{CHANGELIST}{saga.pk}/resolve/"
    assert "resolve_sagas" not in client.get(CHANGELIST).content.decode()
    assert "Resolve…" not in client.get(f"{CHANGELIST}{saga.pk}/change/").content.decode()
    assert client.get(page).status_code == 403
    assert client.post(page, {"note": "forged"}).status_code == 403
    client.post(
        CHANGELIST,
        {"action": "resolve_sagas", "_selected_action": [str(saga.pk)], "apply": "1", "note": "x"},
    )
    saga.refresh_from_db()
    assert saga.resolved_at is None and not LogEntry.objects.exists()

    grant(user, client, "resolve_saga")
    detail = client.get(f"{CHANGELIST}{saga.pk}/change/").content.decode()
    assert "Resolve…" in detail and page in detail
    form = client.get(page)
    assert form.status_code == 200 and 'name="note"' in form.content.decode()
    done = client.post(page, {"note": "refunded <by hand>"}, follow=True)
    assert "1 saga resolved." in done.content.decode()
    saga.refresh_from_db()
    assert saga.resolved_by == "oncall" and saga.resolution_note == "refunded <by hand>"
    entry = LogEntry.objects.get(object_id=str(saga.pk))
    assert entry.user == user
    assert "resolved from the admin: resolved by oncall: refunded <by hand>" in (
        entry.get_change_message()
    )
    # Resolved: no button any more, and the run's page says who resolved it.
    detail = client.get(f"{CHANGELIST}{saga.pk}/change/").content.decode()
    assert "Resolve…" not in detail and "resolved by oncall" in detail
    assert "refunded &lt;by hand&gt;" in detail


@pytest.mark.django_db
def test_admin_bulk_resolve_asks_for_a_note_then_resolves_the_failed_ones(admin_client):
    first, second, done = failed(), failed(), run_inline(sagas.chain, {})
    selected = [str(s.pk) for s in (first, second, done)]
    ask = admin_client.post(CHANGELIST, {"action": "resolve_sagas", "_selected_action": selected})
    body = ask.content.decode()
    assert ask.status_code == 200 and 'name="note"' in body
    assert all(pk in body for pk in selected)
    assert not Saga.objects.filter(resolved_at__isnull=False).exists()  # nothing yet
    page = admin_client.post(
        CHANGELIST,
        {"action": "resolve_sagas", "_selected_action": selected, "apply": "1", "note": "batch"},
        follow=True,
    ).content.decode()
    assert "2 sagas resolved." in page and "1 saga refused" in page
    assert set(Saga.objects.filter(resolution_note="batch").values_list("pk", flat=True)) == {
        first.pk,
        second.pk,
    }
    listing = admin_client.get(f"{CHANGELIST}?attention=failed").content.decode()
    assert str(first.pk) not in listing


# --- retention ----------------------------------------------------------------------------


def _aged(saga: Saga, *, days: float, resolved_days: float | None = None) -> Saga:
    now = timezone.now()
    fields = {"finished_at": now - timedelta(days=days)} if saga.is_terminal else {}
    fields["created_at"] = now - timedelta(days=days + 1)
    if resolved_days is not None:
        fields.update(
            resolved_at=now - timedelta(days=resolved_days), resolved_by="ops", resolution_note="x"
        )
    Saga.objects.filter(pk=saga.pk).update(**fields)
    return saga


def _live(data=None) -> Saga:
    with captured_dispatches():
        return sagas.chain.start(data or {})


def _count_deletes(execute, sql, params, many, context):
    if sql.lstrip().startswith("WITH doomed"):
        _count_deletes.n += 1
    return execute(sql, params, many, context)


@pytest.mark.django_db
def test_retention_deletes_finished_runs_with_their_steps_in_batches(settings):
    settings.SAGAFLOW = {**settings.SAGAFLOW, "JANITOR_BATCH_SIZE": 2}
    doomed = [
        _aged(run_inline(sagas.chain, {}), days=31),
        _aged(run_inline(sagas.chain, {}), days=40),
        _aged(run_inline(sagas.chain, {"fail": {"s1": "abort"}}), days=31),  # compensated
        _aged(failed(), days=90, resolved_days=31),
        _aged(run_inline(sagas.chain, {}), days=400),
    ]
    kept = [
        _aged(run_inline(sagas.chain, {}), days=29),  # young
        _aged(failed(), days=400),  # failed, nobody resolved it: it needs a person
        _aged(failed(), days=400, resolved_days=1),  # resolved lately: ages from then
        _aged(_live(), days=400),  # live runs are never deleted
    ]
    steps_kept = SagaStep.objects.filter(saga__in=kept).count()
    _count_deletes.n = 0
    with connections["default"].execute_wrapper(_count_deletes):
        assert janitor.clean()["sagas"] == 5
    assert _count_deletes.n == 3  # 2 + 2 + 1 (short: the last)
    assert set(Saga.objects.values_list("pk", flat=True)) == {s.pk for s in kept}
    assert not SagaStep.objects.filter(saga_id__in=[s.pk for s in doomed]).exists()
    assert SagaStep.objects.count() == steps_kept
    settings.SAGAFLOW = {**settings.SAGAFLOW, "SAGA_RETENTION": 28 * 86400}
    assert janitor.clean()["sagas"] == 1  # the 29-day-old run is past 28 days


def _dsn() -> str:
    s = connection.settings_dict
    return (
        f"host={s['HOST'] or 'localhost'} port={s['PORT'] or 5432} dbname={s['NAME']} "
        f"user={s['USER']}"
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_retention_skips_a_run_someone_holds_and_takes_it_next_time():
    held, free = (_aged(run_inline(sagas.chain, {}), days=31) for _ in range(2))
    locked, release = threading.Event(), threading.Event()

    def hold():
        with psycopg.connect(_dsn()) as other, other.transaction():
            other.execute("SELECT 1 FROM sagaflow_saga WHERE id = %s FOR UPDATE", [held.pk])
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(30)
        assert retention.purge_finished(10, 30 * 86400) == 1  # did not wait for the lock
        assert list(Saga.objects.values_list("pk", flat=True)) == [held.pk]
    finally:
        release.set()
        holder.join(30)
    assert retention.purge_finished(10, 30 * 86400) == 1
    assert not Saga.objects.exists() and not SagaStep.objects.exists()
    assert free.pk != held.pk
