"""Settings for relay and worker processes started by the outbox tests.

The test settings plus short retry timings, a queue of the test's own (read back
by the test), and knobs from the environment the test sets per process.
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import SAGAFLOW as _BASE

_QUEUE = os.environ.get("OUTBOX_TEST_QUEUE", "sagaflow-outbox-test")
# Everything these processes send (events, retries, kicks) goes to the test's queue,
# which a worker started with the same settings consumes by default.
CELERY_TASK_DEFAULT_QUEUE = _QUEUE
SAGAFLOW = {
    **_BASE,
    "OUTBOX_QUEUE": _QUEUE,
    "OUTBOX_PUBLISHER": os.environ.get(
        "OUTBOX_TEST_PUBLISHER", "sagaflow.outbox.publishers.CeleryPublisher"
    ),
    "OUTBOX_KICK_ON_COMMIT": os.environ.get("OUTBOX_TEST_KICK") == "1",
    "OUTBOX_RETRY_BACKOFF": 0.05,
    "OUTBOX_RETRY_MAX_BACKOFF": 0.5,
    "OUTBOX_MAX_ATTEMPTS": int(os.environ.get("OUTBOX_TEST_MAX_ATTEMPTS", "10000")),
    "OUTBOX_POLL_INTERVAL": 0.5,
    "OUTBOX_PUBLISH_TIMEOUT": float(os.environ.get("OUTBOX_TEST_PUBLISH_TIMEOUT", "8.0")),
    "OUTBOX_BATCH_SIZE": int(os.environ.get("OUTBOX_TEST_BATCH_SIZE", "500")),
}
