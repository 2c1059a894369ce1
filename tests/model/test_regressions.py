"""Examples the model found, replayed as they were shrunk (see ``replay.py``).

Each one is an engine hole of the correctness issue (13), still open: it is marked
``xfail(strict=True)`` with the hole's ``Violation`` as the expected error, so the
suite stays green while the hole is open, and the test fails (XPASS) the day the
fix lands: then remove its marker, and the hole from ``holes.OPEN_HOLES``.
"""

from __future__ import annotations

import pytest

from sagaflow import Retry

from .holes import (
    Hole2Violation,
    Hole3Violation,
    Hole6Violation,
    Hole7Violation,
    Hole8Violation,
    Hole10Violation,
)
from .replay import replay
from .spec import SagaSpec, StepSpec

pytestmark = pytest.mark.django_db(transaction=True)

ONE_STEP = SagaSpec(steps=(StepSpec(),))
TWO_STEPS = SagaSpec(steps=(StepSpec(), StepSpec(retry=Retry(attempts=1))), deadline=5000.0)


@pytest.mark.xfail(
    strict=True,
    raises=Hole2Violation,
    reason="hole 2: an operator's compensate during a retry wait skips the step that acted",
)
def test_operator_compensate_during_a_retry_wait_after_a_lost_worker():
    with replay() as state:
        state.start(spec=ONE_STEP, calm=0, nul_in_data=False)
        state.crash(point="step.after_action", pick=0, outcome="ok", requeue=False)
        state.expire_leases(acts_if_killed=False)  # the lost attempt: a retry is due later
        state.operator_compensate()


@pytest.mark.xfail(
    strict=True,
    raises=Hole2Violation,
    reason="hole 2: a deadline passing during the retry wait of a compensate_on_failure step",
)
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


@pytest.mark.xfail(
    strict=True,
    raises=Hole8Violation,
    reason="hole 8: a NUL character in start data raises a raw DataError",
)
def test_nul_character_in_start_data():
    with replay() as state:
        state.start(spec=ONE_STEP, calm=0, nul_in_data=True)


@pytest.mark.xfail(
    strict=True,
    raises=Hole8Violation,
    reason="hole 8: a step result with a NUL character escapes the record as a DataError",
)
def test_nul_character_in_a_step_result():
    with replay() as state:
        state.start(spec=ONE_STEP, calm=0, nul_in_data=False)
        state.deliver(pick=0, outcome="nul", duplicate=False)


@pytest.mark.xfail(
    strict=True,
    raises=Hole3Violation,
    reason="hole 3: at a deadline the in-flight step's compensation runs before it settles",
)
def test_deadline_while_a_step_runs_compensates_it_before_it_settles():
    with replay() as state:
        state.start(spec=TWO_STEPS, calm=0, nul_in_data=False)
        state.deliver(pick=0, outcome="ok", duplicate=False)
        state.pause(pick=0, outcome="ok", duplicate=False, acts_if_killed=False)  # slow call
        state.pass_deadline()
        state.sweep()
        state.deliver(pick=0, outcome="ok", duplicate=False)  # the refund runs first


@pytest.mark.xfail(
    strict=True,
    raises=Hole3Violation,
    reason="hole 3: an operator's compensate runs the in-flight step's compensation first",
)
def test_operator_compensate_while_a_step_runs_compensates_it_before_it_settles():
    with replay() as state:
        state.start(spec=ONE_STEP, calm=0, nul_in_data=False)
        state.pause(pick=0, outcome="ok", duplicate=False, acts_if_killed=False)
        state.operator_compensate()
        state.deliver(pick=0, outcome="ok", duplicate=False)


@pytest.mark.xfail(
    strict=True,
    raises=Hole6Violation,
    reason="hole 6: a step renamed mid-run is silently not compensated; the run says compensated",
)
def test_renamed_step_is_compensated_or_the_run_stops():
    with replay() as state:
        state.start(spec=TWO_STEPS, calm=0, nul_in_data=False)
        state.deliver(pick=0, outcome="ok", duplicate=False)
        state.deploy(change="rename", pick=0)
        state.deliver(pick=0, outcome="abort", duplicate=False)


@pytest.mark.xfail(
    strict=True,
    raises=Hole7Violation,
    reason="hole 7: a compensation returning an object (a refund) is taken for a failure",
)
def test_compensation_returning_a_non_json_value_counts_as_done():
    with replay() as state:
        state.start(spec=TWO_STEPS, calm=0, nul_in_data=False)
        state.deliver(pick=0, outcome="ok", duplicate=False)
        state.deliver(pick=0, outcome="abort", duplicate=False)
        state.deliver(pick=0, outcome="nonjson", duplicate=False)


@pytest.mark.xfail(
    strict=True,
    raises=Hole7Violation,
    reason="hole 7: a step that acted, then returned a Decimal, is never compensated",
)
def test_step_returning_a_non_json_value_after_acting_is_compensated():
    with replay() as state:
        state.start(spec=ONE_STEP, calm=0, nul_in_data=False)
        state.deliver(pick=0, outcome="nonjson", duplicate=False)


@pytest.mark.xfail(
    strict=True,
    raises=Hole10Violation,
    reason="hole 10: a countdown retry delivered early is dropped; the step waits for the sweeper",
)
def test_retry_delivered_early_is_not_dropped():
    spec = SagaSpec(steps=(StepSpec(retry=Retry(3, 100.0, 400.0)),))
    with replay() as state:
        state.start(spec=spec, calm=0, nul_in_data=False)
        state.deliver(pick=0, outcome="raise", duplicate=False)  # a retry in 50-100 s
        state.deliver_early(pick=0, outcome="ok")
