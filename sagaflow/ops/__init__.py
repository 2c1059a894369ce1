"""Operating sagaflow: what a person may do to runs, and what they can watch.

- ``operations``: ``retry`` and ``compensate`` a run (admin actions and the
  ``sagaflow`` command call these; each locks the run and re-checks its state).
- ``health``: the figures of ``manage.py sagaflow status``; ``metrics``: Prometheus.
- ``janitor``: retention (expired keys, published events, processed inbox rows).

The functions below are the supported API for scripts and shells::

    from sagaflow import ops
    ops.retry(saga_id)
"""

from .operations import compensate, retry

__all__ = ["compensate", "retry"]
