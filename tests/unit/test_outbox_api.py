"""The outbox's pure parts: input checks before any query, consumer registration."""

import pytest

import sagaflow
from sagaflow.exceptions import DefinitionError
from sagaflow.outbox import consumers


def test_publish_checks_input_before_touching_the_database():
    with pytest.raises(sagaflow.InvalidInputError, match="topic=None"):
        sagaflow.publish(None, {})
    with pytest.raises(sagaflow.NotSerializableError, match=r"payload\[0\]: set"):
        sagaflow.publish("t", [{1}])
    with pytest.raises(sagaflow.InvalidInputError, match="headers must be a dict"):
        sagaflow.publish("t", {}, headers=[("a", 1)])


def test_event_from_message():
    event = consumers.Event.from_message({"id": "4", "topic": "t", "payload": [1]})
    assert (event.id, event.key, event.payload, event.headers) == (4, None, [1], {})


def test_consumer_names_must_be_unique():
    @sagaflow.consumer("unit.topic", name="unit.once")
    def first(event):
        pass

    try:
        with pytest.raises(DefinitionError, match="registered twice"):

            @sagaflow.consumer("unit.topic", name="unit.once")
            def second(event):
                pass

        assert [c.name for c in consumers.consumers_of("unit.topic")] == ["unit.once"]
    finally:
        consumers.unregister("unit.once")
    assert consumers.consumers_of("unit.topic") == []
    with pytest.raises(DefinitionError, match="topic"):
        sagaflow.consumer("")
