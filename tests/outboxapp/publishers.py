"""A publisher that fails at random, for relay processes under test.

``OUTBOX_TEST_FAIL_RATE`` (0..1) is the chance that a batch fails; half of the
failures happen *after* the batch reached the broker (duplicates, and the case
that breaks per-key order if the relay moves on to the next event of a key).
"""

import os
import random

from sagaflow.outbox.publishers import CeleryPublisher


class FlakyPublisher(CeleryPublisher):
    def publish(self, events):
        rate = float(os.environ.get("OUTBOX_TEST_FAIL_RATE", "0.3"))
        if random.random() < rate / 2:
            raise ConnectionError("injected publish failure (before sending)")
        super().publish(events)
        if random.random() < rate / 2:
            raise ConnectionError("injected publish failure (after sending)")
