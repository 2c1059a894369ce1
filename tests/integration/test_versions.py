"""Versions of a saga on real PostgreSQL (DESIGN 4.1): each run runs the steps of the
version it started with; a run whose code is gone waits, flagged, and goes on when
the code is back. It is never failed or compensated because of a deploy.

Step functions log what they did to ``LOG`` (they run in this process through
``sagaflow.testing``), so the tests can assert which version's code ran.
"""

from __future__ import annotations

import itertools
import json
import uuid

import pytest
from django.core.checks import run_checks
from django.core.management import call_command

import sagaflow
from sagaflow import Abort
from sagaflow.exceptions import ActionRefused, DefinitionError, UnknownSagaError
from sagaflow.models import Saga, SagaState, SagaStep, StepState
from sagaflow.ops import health, operations
from sagaflow.saga import engine, registry, sweeper
from sagaflow.saga.store import now_minus
from sagaflow.testing import captured_dispatches, drive

pytestmark = pytest.mark.django_db

LOG: list[str] = []
_names = itertools.count()


@pytest.fixture(autouse=True)
def _fresh():
    LOG.clear()
    yield
    for name in list(registry.all_definitions()):
        if name.startswith("versions."):
            registry.unregister(name)


def _logged(tag: str, fail: str | None = None):
    def fn(ctx):
        LOG.append(f"{'undo ' if ctx.compensating else ''}{tag}")
        if fail == "abort" and not ctx.compensating:
            raise Abort(f"{tag} refused")
        return tag

    return fn


def _version(name: str, version: int, steps: list[str], *, fail: str | None = None, **options):
    definition = sagaflow.define(name, version=version, **options)
    for step in steps:
        tag = f"v{version}:{step}"
        definition.step(name=step)(_logged(tag, fail if step == steps[-1] else None)).compensation(
            _logged(tag)
        )
    return definition


def _name() -> str:
    return f"versions.{next(_names)}"


def _start(definition) -> Saga:
    with captured_dispatches():
        return definition.start({})


def _status(capsys) -> tuple[int, dict]:
    try:
        call_command("sagaflow", "status", "--json")
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, json.loads(capsys.readouterr().out)


def _make_due_and_sweep() -> sweeper.SweepReport:
    """Pretend the sweeper's waits have passed, and sweep (messages captured)."""
    SagaStep.objects.filter(due_at__isnull=False).update(dispatched_at=now_minus(3600))
    with captured_dispatches() as sent:
        report = sweeper.sweep()
    for step_id, phase in sent:
        with captured_dispatches():
            engine.execute(step_id, phase)
    return report


def test_version_1_runs_finish_on_version_1_while_new_runs_start_on_version_2():
    name = _name()
    v1 = _version(name, 1, ["reserve", "charge"])
    old = _start(v1)
    drive(old, limit=1)  # in flight: reserve done on version 1
    # The deploy: version 2 of the checkout, with other steps, next to version 1.
    v2 = _version(name, 2, ["reserve", "authorise", "capture"])
    assert registry.get_definition(name) is v2
    assert registry.get_definition(name, 1) is v1
    new = _start(v2)
    also_new = sagaflow.start(name, {})  # start uses the highest version...
    with captured_dispatches():
        from_old_object = v1.start({})  # ...whichever version's object is asked
    assert (old.version, new.version, also_new.version, from_old_object.version) == (1, 2, 2, 2)
    assert list(new.steps.values_list("name", flat=True)) == ["reserve", "authorise", "capture"]
    LOG.clear()
    old, new = drive(old), drive(new)
    assert old.state == new.state == SagaState.COMPLETED
    assert LOG == ["v1:charge", "v2:reserve", "v2:authorise", "v2:capture"]
    assert old.results == {"reserve": "v1:reserve", "charge": "v1:charge"}


def test_a_version_1_run_is_compensated_with_version_1s_code():
    name = _name()
    v1 = _version(name, 1, ["reserve", "charge"], fail="abort")
    old = _start(v1)
    drive(old, limit=1)
    _version(name, 2, ["reserve", "charge"])  # same names, new code
    assert drive(old).state == SagaState.COMPENSATED
    assert LOG == ["v1:reserve", "v1:charge", "undo v1:reserve"]


def test_removing_a_versions_code_leaves_its_runs_waiting_and_flagged_until_it_is_back(
    capsys, admin_client
):
    name = _name()
    v1 = _version(name, 1, ["reserve", "charge"])
    old = _start(v1)
    drive(old, limit=1)
    _version(name, 2, ["reserve", "authorise"])
    registry.unregister(name, 1)  # the deploy that removed version 1's code
    needs = f"needs the code of version 1 of {name}"

    # Reported before any worker looked: this process lacks the code.
    code, report = _status(capsys)
    assert code == 1
    assert report["needs_code"] == [
        {
            "name": name,
            "version": 1,
            "runs": 1,
            "message": f"{needs}: this code defines version(s) 2 only",
        }
    ]
    assert f"1 saga(s) {needs}: this code defines version(s) 2 only" in report["problems"]

    # A worker claims its next step: it neither runs, fails nor compensates it.
    old = drive(old)
    assert old.state == SagaState.RUNNING and old.needs_code_since is not None
    assert old.error.startswith(f"{needs}: this process defines version(s) 2 of it only")
    charge = SagaStep.objects.get(saga=old, name="charge")
    assert charge.state == StepState.PENDING and charge.attempts == 0
    assert charge.due_at is not None
    assert LOG == ["v1:reserve"]

    # The admin says so, in its list and on the run's page.
    listing = admin_client.get("/admin/sagaflow/saga/?attention=needs_code").content.decode()
    assert str(old.id) in listing and needs in listing
    detail = admin_client.get(f"/admin/sagaflow/saga/{old.pk}/change/").content.decode()
    assert needs in detail

    # The sweeper keeps sending its message; each claim finds the code still missing.
    assert _make_due_and_sweep().redispatched == 1
    old.refresh_from_db()
    assert old.state == SagaState.RUNNING and LOG == ["v1:reserve"]
    with pytest.raises(ActionRefused, match=needs):
        operations.retry(old.pk)
    with pytest.raises(ActionRefused, match=needs):
        operations.compensate(old.pk)

    # The next deploy brings version 1 back: the sweeper's resend lets the run finish.
    registry.register(v1)
    assert _make_due_and_sweep().redispatched == 1
    old.refresh_from_db()
    assert old.state == SagaState.COMPLETED and old.needs_code_since is None
    assert old.error == "" and LOG == ["v1:reserve", "v1:charge"]
    code, report = _status(capsys)
    assert code == 0 and report["needs_code"] == []


def test_a_flagged_run_is_reported_even_by_a_process_that_has_the_code(capsys):
    name = _name()
    v1 = _version(name, 1, ["only"])
    saga = _start(v1)
    registry.unregister(name)
    drive(saga)  # a worker without the code flagged it
    registry.register(v1)  # this process (the one running status) has it
    code, report = _status(capsys)
    assert code == 1
    assert report["needs_code"][0]["message"] == (
        f"needs the code of version 1 of {name}: a worker found it missing "
        f"(this process has it: deploy it to every worker)"
    )


def test_an_operator_retry_sends_a_waiting_run_at_once_when_its_code_is_back(
    django_capture_on_commit_callbacks,
):
    name = _name()
    v1 = _version(name, 1, ["only"])
    saga = _start(v1)
    registry.unregister(name)
    drive(saga)
    registry.register(v1)
    with captured_dispatches() as sent, django_capture_on_commit_callbacks(execute=True):
        assert operations.retry(saga.pk) == "step 'only' sent now"
    assert sent == [(SagaStep.objects.get(saga=saga).pk, "forward")]
    saga.refresh_from_db()
    assert saga.needs_code_since is None and saga.error == ""


def test_a_run_past_its_deadline_without_its_code_is_not_compensated_until_it_is_back(
    settings,
):
    settings.SAGAFLOW = {**settings.SAGAFLOW, "SWEEP_BATCH_SIZE": 1}
    name = _name()
    v1 = _version(name, 1, ["reserve", "charge"])
    saga = _start(v1)
    drive(saga, limit=1)
    other = _start(_version(_name(), 1, ["reserve"]))
    registry.unregister(name)
    Saga.objects.filter(pk=saga.pk).update(deadline_at=now_minus(10))
    Saga.objects.filter(pk=other.pk).update(deadline_at=now_minus(1))
    with captured_dispatches():
        assert sweeper.sweep().deadlines == 1  # flagged...
        assert sweeper.sweep().deadlines == 1  # ...and not taken again: the next one is
    other.refresh_from_db()
    assert other.state == SagaState.COMPENSATED
    saga.refresh_from_db()
    assert saga.state == SagaState.RUNNING and saga.needs_code_since is not None
    assert LOG == ["v1:reserve"]
    registry.register(v1)
    drive(saga, limit=1)  # a claim finds the code back, clears the flag, starts nothing
    with captured_dispatches():
        assert sweeper.sweep().deadlines == 1  # the deadline applies again
    saga = drive(saga)
    assert saga.state == SagaState.COMPENSATED
    assert LOG == ["v1:reserve", "undo v1:reserve"]


def test_a_lost_worker_of_a_run_without_its_code_keeps_its_lease_until_the_code_is_back():
    name = _name()
    v1 = _version(name, 1, ["charge"])
    saga = _start(v1)
    step = SagaStep.objects.get(saga=saga)
    assert engine._claim(step.pk, "forward", uuid.uuid4()) is not None  # then the worker died
    registry.unregister(name)
    SagaStep.objects.filter(pk=step.pk).update(lease_expires_at=now_minus(1))
    with captured_dispatches():
        assert sweeper.sweep().expired_leases == 1
    step.refresh_from_db()
    saga.refresh_from_db()
    # What follows a lost attempt (retry, compensate) is the code's to say: nothing yet.
    assert step.state == StepState.RUNNING and step.attempts == 1 and step.history == []
    assert step.lease_token is not None and saga.needs_code_since is not None
    with captured_dispatches():
        assert sweeper.sweep().expired_leases == 0  # its lease was given more time
    registry.register(v1)
    SagaStep.objects.filter(pk=step.pk).update(lease_expires_at=now_minus(1))
    with captured_dispatches():
        assert sweeper.sweep().expired_leases == 1
    saga = drive(saga)
    assert saga.state == SagaState.COMPLETED and saga.needs_code_since is None
    step.refresh_from_db()
    assert [h["outcome"] for h in step.history] == ["lost", "succeeded"]


def test_a_compensation_removed_in_place_makes_the_run_wait_when_it_is_due():
    name = _name()
    v1 = _version(name, 1, ["reserve", "charge"], fail="abort")
    saga = _start(v1)
    drive(saga, limit=1)
    # A worker with the old code runs charge, which refuses: reserve's compensation
    # is due. Meanwhile a deploy removed that compensation, in place.
    in_flight = engine._claim(SagaStep.objects.get(saga=saga, index=1).pk, "forward", uuid.uuid4())
    registry.unregister(name)
    stripped = sagaflow.define(name)
    stripped.step(name="reserve")(_logged("v1:reserve"))
    stripped.step(name="charge")(_logged("v1:charge", "abort"))
    with captured_dispatches():
        engine._attempt(in_flight)
    saga = drive(saga)
    assert saga.state == SagaState.COMPENSATING
    assert saga.error.startswith(
        f"needs the code of version 1 of {name}: step 'reserve' is due for compensation"
    )
    assert LOG == ["v1:reserve", "v1:charge"]
    registry.unregister(name)
    registry.register(v1)
    assert drive(saga).state == SagaState.COMPENSATED
    assert LOG[-1] == "undo v1:reserve"


def test_definitions_are_keyed_by_name_and_version():
    name = _name()
    v1 = _version(name, 1, ["a"])
    v3 = _version(name, 3, ["a", "b"])
    assert registry.versions_of(name) == {1: v1, 3: v3}
    assert registry.get_definition(name) is v3 and registry.all_definitions()[name] is v3
    with pytest.raises(UnknownSagaError, match="needs the code of version 2 of"):
        registry.get_definition(name, 2)
    with pytest.raises(DefinitionError, match=r"Version 1 of saga .* is defined twice"):
        registry.register(sagaflow.SagaDefinition(name, deadline=None, module="other.sagas"))
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(DefinitionError, match="must be a whole number from 1"):
            sagaflow.define(_name(), version=bad)


def _ids(messages) -> list[str]:
    return sorted(
        m.id for m in messages if m.id.startswith("sagaflow.W00") and m.id > "sagaflow.W005"
    )


def test_checks_warn_of_identical_versions():
    name = _name()
    _version(name, 1, ["reserve", "charge"])
    _version(name, 2, ["reserve", "charge"])  # the same code, built the same way
    warnings = [m for m in run_checks() if m.id == "sagaflow.W006"]
    assert len(warnings) == 1
    assert f"Versions 1 and 2 of saga {name!r} are identical" in warnings[0].msg
    registry.unregister(name, 2)
    _version(name, 2, ["reserve", "authorise"])
    assert _ids(run_checks()) == []


def test_checks_warn_of_steps_changed_in_place_and_of_missing_versions_for_live_runs():
    name = _name()
    _start(_version(name, 1, ["reserve", "charge"]))
    _start(_version(name, 2, ["reserve", "authorise"]))
    assert _ids(run_checks(databases=["default"])) == []
    # A deploy edits version 2 in place, and drops version 1.
    registry.unregister(name)
    _version(name, 2, ["reserve", "capture"])
    messages = [
        m for m in run_checks(databases=["default"]) if m.id in ("sagaflow.W007", "sagaflow.W008")
    ]
    assert sorted(m.id for m in messages) == ["sagaflow.W007", "sagaflow.W008"]
    changed = next(m for m in messages if m.id == "sagaflow.W007")
    assert f"Version 2 of saga {name!r} was changed in place" in changed.msg
    assert "started with the steps ['reserve', 'authorise']" in changed.msg
    assert "the code now has ['reserve', 'capture']" in changed.msg
    missing = next(m for m in messages if m.id == "sagaflow.W008")
    assert f"1 live run(s) of saga {name!r} are version 1, which this code" in missing.msg
    assert not any(m.id == "sagaflow.W007" for m in run_checks())  # a database check only


def test_health_knows_a_run_of_a_version_whose_steps_changed_in_place():
    name = _name()
    _start(_version(name, 1, ["reserve", "charge"]))
    registry.unregister(name)
    _version(name, 1, ["reserve", "authorise"])
    assert health.check().needs_code == [
        {
            "name": name,
            "version": 1,
            "runs": 1,
            "message": f"needs the code of version 1 of {name}: its steps were changed in "
            f"place (restore them; add a new version)",
        }
    ]
