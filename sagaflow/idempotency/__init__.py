"""Idempotency keys for API views (the IETF ``Idempotency-Key`` draft).

``@idempotent`` makes a view run once per client key and replays its response to
retries. Which module owns what:

- ``decorator``: the decorator and the claim, run, store flow around the view;
- ``http``: the header, the request's fingerprint, problem+json and replays;
- ``store``: every query on ``IdempotencyKey`` (PostgreSQL), ``portable`` the same
  rules through the ORM for other databases; ``cache``: the optional replay cache.

``sagaflow.middleware.IdempotencyMiddleware`` is the HTTP boundary it needs.
"""

from .decorator import IdempotencyInfo, idempotent
from .http import HEADER, REPLAYED_HEADER, fingerprint, parse_key, problem_response, user_scope

__all__ = [
    "HEADER",
    "REPLAYED_HEADER",
    "IdempotencyInfo",
    "fingerprint",
    "idempotent",
    "parse_key",
    "problem_response",
    "user_scope",
]
