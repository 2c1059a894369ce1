"""The relay's scan floor (P3): claims may skip the head of the pending index, never
reorder a key, and a floor never stays above rows it has not seen."""

from __future__ import annotations

import pytest
from django.test import override_settings

import sagaflow
from sagaflow.models import OutboxEvent, OutboxState
from sagaflow.outbox import store as outbox_store
from sagaflow.outbox.relay import FLOOR_LAG, FULL_SCAN_EVERY, _ScanFloor

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _settings():
    with override_settings(SAGAFLOW={"OUTBOX_KICK_ON_COMMIT": False}):
        yield


def test_an_event_below_the_floor_blocks_its_key_but_not_others():
    first = sagaflow.publish("t", {"n": 1}, key="k")
    second = sagaflow.publish("t", {"n": 2}, key="k")
    other = sagaflow.publish("t", {"n": 3}, key="other")
    unkeyed = sagaflow.publish("t", {"n": 4})

    events, window_first, _ = outbox_store.claim(10, floor=second)
    assert [e.id for e in events] == [other, unkeyed]  # "k" waits for its first event
    assert window_first == second

    events = outbox_store.claim(10).events  # a claim without a floor takes the key in order
    assert [e.id for e in events] == [first, second]
    assert set(OutboxEvent.objects.values_list("state", flat=True)) == {OutboxState.PUBLISHED}


def test_the_floor_lags_is_dropped_by_lower_ids_and_yields_to_full_scans():
    floor = _ScanFloor()
    assert floor.get(100.0) == 0  # the first claim scans everything
    floor.saw(100.0, 50)
    assert floor.get(100.0 + FLOOR_LAG / 2) == 0  # too recent to trust
    floor.saw(100.0 + FLOOR_LAG / 2, 80)
    assert floor.get(100.0 + FLOOR_LAG) == 50
    assert floor.get(100.0 + FLOOR_LAG * 1.5) == 80
    floor.saw(100.0 + FLOOR_LAG * 1.5, 20)  # e.g. a late commit found by a full scan
    assert floor.get(100.0 + FLOOR_LAG * 1.6) == 0
    assert floor.get(100.0 + FULL_SCAN_EVERY) == 0  # every second: a full claim
    assert floor.get(100.0 + FULL_SCAN_EVERY + FLOOR_LAG * 0.6) == 20
