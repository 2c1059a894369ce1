"""Local steps: a saga's later attempts run in the task of the first, one commit each."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

import sagaflow
from sagaflow.exceptions import DefinitionError, FaultInjected
from sagaflow.models import SagaState, SagaStep, StepState
from sagaflow.saga import engine
from sagaflow.testing import armed_fault, captured_dispatches, drive, expire_leases
from tests.sagaapp import sagas
from tests.sagaapp.models import Call, Effect

# Real commits: the point is what each transaction holds.
pytestmark = pytest.mark.django_db(transaction=True)

# Steps that write nothing of their own, so every commit counted is the engine's.
quiet_local = sagaflow.define("quiet_local", local_steps=True)
for _i in range(4):
    quiet_local.step(name=f"q{_i}")(lambda ctx: sorted(ctx.results))


def start_and_run_first_message(data=None, definition=sagas.local_chain):
    with captured_dispatches() as sent:
        saga = definition.start(data)
        assert len(sent) == 1
        with CaptureQueriesContext(connection) as queries:
            engine.execute(*sent[0])
    saga.refresh_from_db()
    commits = sum(1 for q in queries.captured_queries if q["sql"] == "COMMIT")
    return saga, sent, commits


def test_one_message_runs_every_step_with_one_commit_each():
    saga, sent, commits = start_and_run_first_message(definition=quiet_local)
    assert saga.state == SagaState.COMPLETED
    # Each step saw its predecessors' results, handed over in memory.
    assert saga.results == {"q0": [], "q1": ["q0"], "q2": ["q0", "q1"], "q3": ["q0", "q1", "q2"]}
    assert len(sent) == 1  # no step after the first went through the broker
    assert commits == 1 + 4  # the first step's claim, then one record per step
    steps = list(saga.steps.order_by("index"))
    assert [s.attempts for s in steps] == [1, 1, 1, 1]
    assert [s.history[-1]["outcome"] for s in steps] == ["succeeded"] * 4


def test_steps_see_the_results_before_them_and_act_once():
    saga, sent, _ = start_and_run_first_message({"order": 1})
    assert saga.state == SagaState.COMPLETED
    assert list(saga.results) == ["l0", "l1", "l2", "l3"]
    assert len(sent) == 1
    assert Effect.objects.filter(saga_id=saga.id, kind="step").count() == 4


def test_compensations_also_run_locally_in_reverse_order():
    saga, sent, _ = start_and_run_first_message({"fail": {"l2": "abort"}})
    assert saga.state == SagaState.COMPENSATED
    assert len(sent) == 1
    undone = Call.objects.filter(saga_id=saga.id, kind="compensation").order_by("id")
    assert list(undone.values_list("step", flat=True)) == ["l1", "l0"]


def test_a_retry_waits_through_the_broker_then_continues_locally():
    saga, sent, _ = start_and_run_first_message({"fail": {"l1": 1}})
    assert saga.state == SagaState.RUNNING
    assert len(sent) == 2  # the retry of l1, with its countdown
    l1 = SagaStep.objects.get(saga=saga, name="l1")
    SagaStep.objects.filter(pk=l1.pk).update(due_at=l1.due_at.replace(year=2000))
    with captured_dispatches() as more:
        engine.execute(*sent[1])
    saga.refresh_from_db()
    assert saga.state == SagaState.COMPLETED
    assert more == []
    assert SagaStep.objects.get(pk=l1.pk).attempts == 2


def test_a_crash_after_a_record_leaves_the_claimed_step_to_the_sweeper():
    with captured_dispatches() as sent:
        saga = sagas.local_chain.start()
        with armed_fault("step.after_record"), pytest.raises(FaultInjected):
            engine.execute(*sent[0])
    l1 = SagaStep.objects.get(saga=saga, name="l1")
    # l0's record claimed l1 in the same commit: it is leased, its attempt counted.
    assert (l1.state, l1.attempts, l1.lease_token is not None) == (StepState.RUNNING, 1, True)
    assert not Call.objects.filter(saga_id=saga.id, step="l1").exists()

    assert expire_leases(saga) == 1
    saga = drive(saga)
    assert saga.state == SagaState.COMPLETED
    l1.refresh_from_db()
    assert l1.attempts == 2
    assert [h["outcome"] for h in l1.history] == ["lost", "succeeded"]
    assert Effect.objects.get(saga_id=saga.id, step="l1").requests == 1


def test_local_steps_must_be_a_bool():
    with pytest.raises(DefinitionError, match=r"local_steps='yes' must be True or False"):
        sagaflow.define("bad_local", local_steps="yes")
