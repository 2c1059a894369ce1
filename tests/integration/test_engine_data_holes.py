"""The engine's data holes a review found (issue 13, holes 7 and 8): values a step
returns or a caller passes that JSON or PostgreSQL cannot store. Each test failed
before its fix; the helpers are those of ``test_engine_holes``."""

from __future__ import annotations

from decimal import Decimal

import pytest

from sagaflow.exceptions import InvalidInputError, NotSerializableError
from sagaflow.models import Saga, SagaState, StepState
from sagaflow.testing import captured_dispatches, drive
from tests.integration.test_engine_holes import (
    LOG,
    _define,
    _fresh_log,  # noqa: F401 - autouse fixture
    _logged,
    _start,
    _step,
)

# --- hole 7: non-JSON return values ------------------------------------------------


@pytest.mark.django_db
def test_a_compensation_returning_an_object_is_a_success():
    definition = _define()

    def refund(ctx):
        LOG.append("refund")
        return object()  # a refund object: thrown away, never stored

    definition.step(name="charge")(_logged("charge")).compensation(refund)
    definition.step(name="ship")(_logged("ship", fail="abort"))
    saga = drive(_start(definition))
    assert saga.state == SagaState.COMPENSATED
    assert LOG == ["charge:1", "ship:1", "refund"]
    assert _step(saga, 0).compensation_attempts == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("value", "reason"),
    [(Decimal("9.99"), "Decimal"), ({"note": "a\x00b"}, "NUL character")],
)
def test_a_step_that_acts_then_returns_an_unstorable_value_is_compensated(value, reason):
    definition = _define()
    definition.step(name="reserve")(_logged("reserve")).compensation(_logged("reserve"))
    definition.step(name="charge")(_logged("charge", result=value)).compensation(_logged("charge"))
    saga = drive(_start(definition))
    assert saga.state == SagaState.COMPENSATED
    # It ran once (a retry would act again for the same result), and it is undone.
    assert LOG == ["reserve:1", "charge:1", "undo charge", "undo reserve"]
    charge = _step(saga, 1)
    assert charge.state == StepState.COMPENSATED and charge.attempts == 1
    assert reason in saga.error


# --- hole 8: NUL characters are refused before PostgreSQL sees them ----------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda d: d.start({"sku": "a\x00b"}), NotSerializableError, "NUL character"),
        (lambda d: d.start({"a\x00": 1}), NotSerializableError, "NUL character"),
        (lambda d: d.start({}, key="k\x00"), InvalidInputError, "without NUL"),
        (lambda d: d.start({}, correlation_id="c\x00"), InvalidInputError, "without NUL"),
        (
            lambda d: d.start(_nested(150)),
            NotSerializableError,
            "nested deeper than 100 levels",
        ),
    ],
)
def test_unstorable_start_input_is_a_clear_error_and_writes_nothing(call, error, message):
    definition = _define()
    definition.step(name="only")(_logged("only"))
    with captured_dispatches(), pytest.raises(error) as info:
        call(definition)
    assert message in str(info.value)
    assert Saga.objects.count() == 0


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return {"deep": value}


# --- at scale: a step's history does not grow without end ---------------------------


@pytest.mark.django_db
def test_a_steps_history_keeps_its_first_and_latest_attempts():
    from sagaflow.saga.attempts import HISTORY_MAX_ENTRIES, Outcome, note_attempt

    definition = _define()
    definition.step(name="only")(_logged("only"))
    saga = _start(definition)
    step = _step(saga, 0)
    for attempt in range(1, HISTORY_MAX_ENTRIES + 30):
        step.attempts = attempt
        note_attempt(step, "forward", "failed", Outcome(error=f"try {attempt}"))
    assert len(step.history) == HISTORY_MAX_ENTRIES
    assert step.history[0]["attempt"] == 1
    assert step.history[-1]["attempt"] == HISTORY_MAX_ENTRIES + 29
