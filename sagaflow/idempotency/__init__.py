"""Idempotency keys for API views (the IETF ``Idempotency-Key`` draft).

``@idempotent`` makes a view run once per client key and replays its response to
retries with the same key; ``sagaflow.middleware.IdempotencyMiddleware`` is the
HTTP boundary it needs. Which module owns what:

- ``policy``: the decorator's options, whose key it is (``user_scope``), and what
  a request asks, decided without the database;
- ``decorator``: ``@idempotent``, taking the key and running the view; ``record``:
  what of the view's response is stored for replay (size, status, no-store);
- ``http``: the header's grammar, the request's fingerprint, problem+json, replays;
- ``store``: every read and write of ``IdempotencyKey``, through ``postgresql``
  (production's statements) or ``portable`` (the ORM, for SQLite); ``outcomes``:
  the result types they share; ``cache``: the optional replay cache.
"""

from .decorator import idempotent
from .http import HEADER, REPLAYED_HEADER, fingerprint, parse_key, problem_response
from .policy import ATOMIC, CLAIM_FIRST, IdempotencyInfo, user_scope

__all__ = [
    "ATOMIC",
    "CLAIM_FIRST",
    "HEADER",
    "REPLAYED_HEADER",
    "IdempotencyInfo",
    "fingerprint",
    "idempotent",
    "parse_key",
    "problem_response",
    "user_scope",
]
