"""Examples the model found, replayed as they were shrunk (see ``replay.py``).

Each one is an engine hole of the correctness issue (13) that the model found while
it was open (then marked ``xfail(strict=True)`` with the hole's ``Violation``); the
fixes have landed, so each is now a plain regression test.
"""

from __future__ import annotations

import pytest

from sagaflow import Retry

from .replay import replay
from .spec import SagaSpec, StepSpec

pytestmark = pytest.mark.django_db(transaction=True)

ONE_STEP = SagaSpec(steps=(StepSpec(),))
TWO_STEPS = SagaSpec(steps=(StepSpec(), StepSpec(retry=Retry(attempts=1))), deadline=5000.0)


def test_operator_compensate_during_a_retry_wait_after_a_lost_worker():
    with replay() as state:
        state.start(spec=ONE_STEP, calm=0, nul_in_data=False)
        state.crash(point="step.after_action", pick=0, outcome="ok", requeue=False)
        state.expire_leases(acts_if_killed=False)  # the lost attempt: a retry is due later
        state.operator_compensate()


def test_deadline_during_the_retry_wait_of_a_step_that_may_have_acted():
    spec = SagaSpec(
        steps=(StepSpec(compensate_on_failure=True, retry=Retry(3, 100.0, 400.0)),),
        deadline=5000.0,
    )
    with replay() as state:
        state.start(spec=spec, calm=0, nul_in_data=False)
        state.deliver(pick=0, outcome="act_raise", duplicate=False)  # charged, then timed out
        state.pass_deadline()
        state.sweep()


def test_nul_character_in_start_data():
    with replay() as state:
        state.start(spec=ONE_STEP, calm=0, nul_in_data=True)


def test_nul_character_in_a_step_result():
    with replay() as state:
        state.start(spec=ONE_STEP, calm=0, nul_in_data=False)
        state.deliver(pick=0, outcome="nul", duplicate=False)


def test_deadline_while_a_step_runs_compensates_it_before_it_settles():
    with replay() as state:
        state.start(spec=TWO_STEPS, calm=0, nul_in_data=False)
        state.deliver(pick=0, outcome="ok", duplicate=False)
        state.pause(pick=0, outcome="ok", duplicate=False, acts_if_killed=False)  # slow call
        state.pass_deadline()
        state.sweep()
        # Before the fix the refund's message was on its way here, to run before the
        # charge settled; now nothing is sent until the paused attempt ends.
        assert state.machine.queue == []


def test_operator_compensate_while_a_step_runs_compensates_it_before_it_settles():
    with replay() as state:
        state.start(spec=ONE_STEP, calm=0, nul_in_data=False)
        state.pause(pick=0, outcome="ok", duplicate=False, acts_if_killed=False)
        state.operator_compensate()
        assert state.machine.queue == []  # the undo waits for the paused attempt to settle


def test_renamed_step_is_compensated_or_the_run_stops():
    with replay() as state:
        state.start(spec=TWO_STEPS, calm=0, nul_in_data=False)
        state.deliver(pick=0, outcome="ok", duplicate=False)
        state.deploy(change="rename", pick=0)
        state.deliver(pick=0, outcome="abort", duplicate=False)


def test_compensation_returning_a_non_json_value_counts_as_done():
    with replay() as state:
        state.start(spec=TWO_STEPS, calm=0, nul_in_data=False)
        state.deliver(pick=0, outcome="ok", duplicate=False)
        state.deliver(pick=0, outcome="abort", duplicate=False)
        state.deliver(pick=0, outcome="nonjson", duplicate=False)


def test_step_returning_a_non_json_value_after_acting_is_compensated():
    with replay() as state:
        state.start(spec=ONE_STEP, calm=0, nul_in_data=False)
        state.deliver(pick=0, outcome="nonjson", duplicate=False)


def test_retry_delivered_early_is_not_dropped():
    spec = SagaSpec(steps=(StepSpec(retry=Retry(3, 100.0, 400.0)),))
    with replay() as state:
        state.start(spec=spec, calm=0, nul_in_data=False)
        state.deliver(pick=0, outcome="raise", duplicate=False)  # a retry in 50-100 s
        state.deliver_early(pick=0, outcome="ok")
