"""Operating sagaflow: what a person may do to runs, and what they can watch.

- ``operations``: ``retry``, ``compensate`` and ``resolve`` a run (admin actions
  and the ``sagaflow`` command call these; each locks the run and re-checks its
  state).
- ``health``: the figures of ``manage.py sagaflow status``; ``metrics``: Prometheus.
- ``dead_letters``: re-queue dead outbox events and dead consumer runs.
- ``janitor``: retention (expired keys, published events, processed inbox rows,
  finished runs).

The functions below are the supported API for scripts and shells:

    from sagaflow import ops
    ops.retry(saga_id)
    ops.resolve(saga_id, note="refunded by hand, ticket 4711", user=request.user)
    ops.requeue_dead_events()
"""

from .dead_letters import requeue_dead_events, requeue_dead_inbox
from .operations import compensate, resolve, retry

__all__ = ["compensate", "requeue_dead_events", "requeue_dead_inbox", "resolve", "retry"]
