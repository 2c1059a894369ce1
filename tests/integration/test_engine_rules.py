"""Engine rules on real PostgreSQL, driven in-process with sagaflow.testing."""

import logging
import uuid

import pytest

import sagaflow
from sagaflow import signals
from sagaflow.exceptions import (
    FaultInjected,
    InvalidInputError,
    NotSerializableError,
    UnknownSagaError,
)
from sagaflow.models import Saga, SagaState, SagaStep, StepState
from sagaflow.saga import engine, registry
from sagaflow.testing import armed_fault, captured_dispatches, drive, expire_leases, run_inline
from tests.sagaapp import sagas
from tests.sagaapp.models import AtomicWrite, Call, Effect

pytestmark = pytest.mark.django_db


def test_start_sends_the_first_step_only_after_commit(django_capture_on_commit_callbacks):
    with captured_dispatches() as sent:
        with django_capture_on_commit_callbacks(execute=True):
            saga = sagas.chain.start({"a": 1})
            assert sent == []  # nothing may point at a row that is not committed
        first = SagaStep.objects.get(saga=saga, index=0)
        assert sent == [(first.pk, "forward")]
    assert saga.state == SagaState.RUNNING and saga.deadline_at is None
    assert saga.correlation_id == str(saga.id)


def test_same_key_returns_the_existing_run():
    first = run_inline(sagas.chain, {"n": 1}, key="k-1")
    again = sagas.chain.start({"n": 2}, key="k-1")
    assert again.pk == first.pk and again.data == {"n": 1}
    assert Saga.objects.count() == 1 and SagaStep.objects.count() == 4
    # The same key under another saga name is another run.
    other = run_inline(sagas.atomic_saga, {}, key="k-1")
    assert other.pk != first.pk


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: sagas.chain.start({"amount": object()}),
            NotSerializableError,
            "data['amount']: object",
        ),
        (lambda: sagas.chain.start({"x": float("nan")}), NotSerializableError, "nan"),
        (lambda: sagas.chain.start({1: "a"}), NotSerializableError, "JSON keys must be str"),
        (
            lambda: sagas.chain.start({}, key="k" * 201),
            InvalidInputError,
            "201 characters long; the limit is 200",
        ),
        (lambda: sagas.chain.start({}, key=""), InvalidInputError, "non-empty"),
        (
            lambda: sagaflow.start("no_such_saga", {}),
            UnknownSagaError,
            "No saga named 'no_such_saga'",
        ),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)
    assert Saga.objects.count() == 0 and SagaStep.objects.count() == 0


def _calls(step_name: str):
    def step(ctx):
        Call.objects.create(
            saga_id=ctx.saga_id,
            step=step_name,
            kind="compensation" if ctx.compensating else "step",
            attempt=ctx.attempt,
            idempotency_key=ctx.idempotency_key,
            pid=0,
        )

    return step


def _define_evolving(second: str) -> sagaflow.SagaDefinition:
    evolving = sagaflow.define("evolving")
    evolving.step(name="reserve")(_calls("reserve"))
    evolving.step(name=second)(_calls(second))
    return evolving


def test_a_step_renamed_in_place_makes_the_run_wait_for_its_code():
    try:
        with captured_dispatches():
            saga = _define_evolving("charge").start({})
        # A deploy changes version 1 in place while the run is in flight: "charge"
        # became "authorise". The run must not run a step it was not started with.
        registry.unregister("evolving")
        _define_evolving("authorise")
        saga = drive(saga)
        assert saga.state == SagaState.RUNNING and saga.needs_code_since is not None
        assert saga.error.startswith("needs the code of version 1 of evolving: ")
        assert "started with the steps ['reserve', 'charge']" in saga.error
        assert Call.objects.count() == 0  # not even its first step: its code is not here
        assert SagaStep.objects.get(saga=saga, index=0).attempts == 0
        # The next deploy restores version 1's steps: the run goes on where it was.
        registry.unregister("evolving")
        _define_evolving("charge")
        saga = drive(saga)
    finally:
        registry.unregister("evolving")
    assert saga.state == SagaState.COMPLETED and saga.needs_code_since is None
    assert saga.error == ""
    assert list(Call.objects.order_by("pk").values_list("step", flat=True)) == [
        "reserve",
        "charge",
    ]


def test_a_removed_saga_definition_makes_the_run_wait_until_it_is_back():
    gone = sagaflow.define("gone")
    gone.step(name="only")(_calls("only"))
    with captured_dispatches():
        saga = gone.start({})
    registry.unregister("gone")
    try:
        saga = drive(saga)
        assert saga.state == SagaState.RUNNING
        assert saga.error.startswith(
            "needs the code of version 1 of gone: no saga named 'gone' is defined"
        )
        step = SagaStep.objects.get(saga=saga)
        assert step.state == StepState.PENDING and step.attempts == 0
        assert step.due_at is not None  # still due: the sweeper sends it again
        registry.register(gone)
        saga = drive(saga)
    finally:
        registry.unregister("gone")
    assert saga.state == SagaState.COMPLETED and saga.needs_code_since is None
    assert Call.objects.filter(step="only").count() == 1


def test_failed_saga_alerts_with_a_signal_and_an_error_log(
    caplog, django_capture_on_commit_callbacks
):
    received = []

    def on_failed(sender, saga, error, **kwargs):
        received.append((saga.pk, error))

    signals.saga_failed.connect(on_failed)
    try:
        with (
            caplog.at_level(logging.ERROR, logger="sagaflow.engine"),
            captured_dispatches(),
            django_capture_on_commit_callbacks(execute=True),
        ):
            saga = sagas.chain.start({"fail": {"s1": "abort"}, "comp_fail": {"s0": "always"}})
            saga = drive(saga)
    finally:
        signals.saga_failed.disconnect(on_failed)
    assert saga.state == SagaState.FAILED
    assert received == [(saga.pk, saga.error)]
    records = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(records) == 1 and records[0].saga_id == str(saga.id)
    assert "compensation of step 's0' failed after 3 attempt(s)" in records[0].getMessage()


def test_late_result_of_a_taken_over_attempt_is_rejected(caplog):
    with captured_dispatches():
        saga = sagas.chain.start({})
    s0 = SagaStep.objects.get(saga=saga, index=0)
    zombie = engine._claim(s0.pk, "forward", uuid.uuid4())
    outcome = engine._run(zombie, zombie.step_def.fn, savepoint=False)  # did its work...
    assert expire_leases(saga) == 1  # ...but its worker is presumed dead
    saga = drive(saga)
    assert saga.state == SagaState.COMPLETED
    assert saga.results["s0"] == {"step": "s0", "attempt": 2}

    with caplog.at_level(logging.WARNING, logger="sagaflow.engine"):
        assert engine._record_if_current(zombie, outcome) is False
    saga.refresh_from_db()
    assert saga.results["s0"] == {"step": "s0", "attempt": 2}
    assert "stale result rejected" in caplog.text
    assert Effect.objects.get(saga_id=saga.id, step="s0").requests == 2


def test_crash_inside_an_atomic_step_rolls_back_and_is_retried():
    with captured_dispatches():
        saga = sagas.atomic_saga.start({})
    with armed_fault("step.after_action"), pytest.raises(FaultInjected):
        drive(saga)
    assert AtomicWrite.objects.count() == 0
    step = SagaStep.objects.get(saga=saga, index=0)
    assert step.state == StepState.RUNNING and step.lease_token is not None
    assert drive(saga).state == SagaState.RUNNING  # the lease still looks alive
    expire_leases(saga)
    saga = drive(saga)
    assert saga.state == SagaState.COMPLETED
    assert AtomicWrite.objects.filter(saga_id=saga.id).count() == 1
    assert SagaStep.objects.get(pk=step.pk).attempts == 2


def test_idempotency_keys_are_stable_per_step_and_distinct_per_compensation():
    saga = run_inline(sagas.chain, {"fail": {"s2": 1, "s3": "abort"}})
    keys = {}
    for call in Call.objects.filter(saga_id=saga.id):
        keys.setdefault((call.step, call.kind), set()).add(call.idempotency_key)
    assert all(len(v) == 1 for v in keys.values())  # s2 tried twice, one key
    assert len({next(iter(v)) for v in keys.values()}) == len(keys)
    assert keys[("s2", "step")] == {f"sagaflow:{saga.id}:2:s2"}
    assert keys[("s1", "compensation")] == {f"sagaflow:{saga.id}:1:s1:compensation"}


def test_compensate_on_failure_undoes_a_step_that_may_have_acted():
    saga = run_inline(sagas.uncertain, {"fail": {"charge_card": "always"}})
    assert saga.state == SagaState.COMPENSATED
    undone = Call.objects.filter(saga_id=saga.id, kind="compensation").order_by("id")
    assert list(undone.values_list("step", flat=True)) == ["charge_card", "hold"]
    charge = Effect.objects.get(saga_id=saga.id, step="charge_card")
    assert charge.kind == "refunded" and charge.idempotency_key.endswith(":1:charge_card")


def test_compensate_on_failure_does_not_apply_to_abort():
    saga = run_inline(sagas.uncertain, {"fail": {"charge_card": "abort"}})
    assert saga.state == SagaState.COMPENSATED
    undone = Call.objects.filter(saga_id=saga.id, kind="compensation")
    assert list(undone.values_list("step", flat=True)) == ["hold"]
