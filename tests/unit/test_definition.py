"""Malformed definitions are refused when their module is imported."""

import re
from datetime import timedelta

import pytest

import sagaflow
from sagaflow import DefinitionError, Retry
from sagaflow.jsonvalue import ensure_json
from sagaflow.saga import registry


@pytest.fixture
def saga():
    definition = sagaflow.define("unit_saga")
    yield definition
    registry.unregister("unit_saga")


def test_steps_keep_definition_order_and_are_callable(saga):
    @saga.step
    def first(ctx):
        return "called"

    @saga.step(retry=Retry(attempts=5), timeout=timedelta(seconds=3), atomic=True)
    def second(ctx):
        return None

    @first.compensation
    def undo_first(ctx):
        return None

    assert [s.name for s in saga.steps] == ["first", "second"]
    assert second.timeout == 3.0 and second.atomic and second.retry.attempts == 5
    assert first.has_compensation and not second.has_compensation
    assert first(None) == "called"
    assert registry.get_definition("unit_saga") is saga


def test_duplicate_saga_name_from_another_module_is_refused(saga):
    duplicate = sagaflow.SagaDefinition("unit_saga", deadline=None, module="elsewhere.sagas")
    with pytest.raises(
        DefinitionError,
        match=re.escape("defined twice: in tests.unit.test_definition and in elsewhere.sagas"),
    ):
        registry.register(duplicate)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda s: s.step(name="a")(lambda ctx: 1) and s.step(name="a")(lambda ctx: 2),
            "already has a step named 'a'",
        ),
        (lambda s: s.step(name="a")(lambda: 1), "must accept exactly one positional argument"),
        (
            lambda s: s.step(name="a", timeout=0)(lambda ctx: 1),
            "timeout=0 must be a number of seconds > 0",
        ),
        (lambda s: s.step(name="a", retry=3)(lambda ctx: 1), "must be a sagaflow.Retry"),
        (
            lambda s: s.step(name="a", atomic="yes")(lambda ctx: 1),
            "atomic='yes' must be True or False",
        ),
        (lambda s: s.step(lambda ctx: 1), "Step name '<lambda>' is invalid"),
        (lambda s: s.step(name="has space")(lambda ctx: 1), "Step name 'has space' is invalid"),
    ],
)
def test_malformed_steps_are_refused(saga, make, message):
    with pytest.raises(DefinitionError) as info:
        make(saga)
    assert message in str(info.value)


def test_async_step_is_refused(saga):
    async def fetch(ctx):
        return None

    with pytest.raises(DefinitionError, match="is async"):
        saga.step(fetch)


def test_compensation_defined_twice_is_refused(saga):
    step = saga.step(name="only")(lambda ctx: None)
    step.compensation(lambda ctx: None)
    with pytest.raises(DefinitionError, match=r"compensation of step 'only' .* defined twice"):
        step.compensation(lambda ctx: None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempts": 0}, "must be at least 1"),
        ({"attempts": 2.5}, "must be an int"),
        ({"backoff": -1}, "backoff=-1"),
        ({"backoff": 5, "max_backoff": 1}, "make max_backoff >= backoff"),
    ],
)
def test_bad_retry_policies_are_refused(kwargs, message):
    with pytest.raises(DefinitionError) as info:
        Retry(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("deadline", [timedelta(0), 30, "15m"])
def test_bad_deadline_is_refused(deadline):
    with pytest.raises(DefinitionError, match=re.escape("must be a positive datetime.timedelta")):
        sagaflow.define("bad_deadline", deadline=deadline)
    assert "bad_deadline" not in registry.all_definitions()


def test_json_round_trip_and_error_path():
    assert ensure_json({"a": (1, 2)}, "data") == {"a": [1, 2]}
    with pytest.raises(sagaflow.NotSerializableError, match=r"data\['items'\]\[1\]: Decimal"):
        from decimal import Decimal

        ensure_json({"items": [1, Decimal("2.5")]}, "data")
