"""Versions and queues of a definition are checked when its module is imported."""

import pytest

import sagaflow
from sagaflow import DefinitionError
from sagaflow.saga import registry
from sagaflow.saga.attempts import COMPENSATE, FORWARD, queue_of
from sagaflow.saga.definition import steps_fingerprint


@pytest.fixture(autouse=True)
def _forget():
    yield
    registry.unregister("unit_options")


def test_queues_of_steps_and_compensations():
    saga = sagaflow.define("unit_options")
    paid = saga.step(name="pay", queue="payments")(lambda ctx: None)
    paid.compensation(lambda ctx: None)
    kept = saga.step(name="keep")(lambda ctx: None)
    kept.compensation(queue="refunds")(lambda ctx: None)
    assert (queue_of(paid, FORWARD), queue_of(paid, COMPENSATE)) == ("payments", "payments")
    assert (queue_of(kept, FORWARD), queue_of(kept, COMPENSATE)) == (None, "refunds")


@pytest.mark.parametrize("queue", ["", " payments", "q" * 201, 7])
def test_a_bad_queue_is_refused(queue):
    saga = sagaflow.define("unit_options")
    with pytest.raises(DefinitionError, match="must be a Celery queue name"):
        saga.step(name="a", queue=queue)(lambda ctx: None)


def test_the_fingerprint_follows_the_step_names_in_order():
    saga = sagaflow.define("unit_options", version=2)
    saga.step(name="a")(lambda ctx: None)
    first = saga.fingerprint
    saga.step(name="b")(lambda ctx: None)
    assert saga.fingerprint == steps_fingerprint(["a", "b"]) != first
    assert steps_fingerprint(["b", "a"]) != saga.fingerprint
    assert repr(saga) == "<SagaDefinition 'unit_options' version 2: a, b>"
