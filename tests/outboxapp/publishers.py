"""Publishers with injected faults, for relay processes under test.

``FlakyPublisher``: ``OUTBOX_TEST_FAIL_RATE`` (0..1) is the chance that a batch
fails; half of the failures happen *after* the batch reached the broker (duplicates,
and the case that breaks per-key order if the relay moves on to the next event of
a key).

``SlowPublisher``: a broker slower than the relay's hold limit. A batch with an
event of topic ``OUTBOX_TEST_SLOW_TOPIC`` (default ``outbox.slow``) takes
``OUTBOX_TEST_PUBLISH_DELAY`` seconds, then *reaches the broker*.
"""

import os
import random
import time

from sagaflow.outbox.publishers import CeleryPublisher


class FlakyPublisher(CeleryPublisher):
    def publish(self, events):
        rate = float(os.environ.get("OUTBOX_TEST_FAIL_RATE", "0.3"))
        if random.random() < rate / 2:
            raise ConnectionError("injected publish failure (before sending)")
        super().publish(events)
        if random.random() < rate / 2:
            raise ConnectionError("injected publish failure (after sending)")


class SlowPublisher(CeleryPublisher):
    def publish(self, events):
        slow = os.environ.get("OUTBOX_TEST_SLOW_TOPIC", "outbox.slow")
        if any(event["topic"] == slow for event in events):
            time.sleep(float(os.environ.get("OUTBOX_TEST_PUBLISH_DELAY", "2.5")))
        super().publish(events)
