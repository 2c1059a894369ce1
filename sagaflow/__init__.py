"""sagaflow: orchestrated sagas, a transactional outbox and idempotency keys for
Django + Celery, with PostgreSQL as the only source of truth.

The public API is what this module exports; everything else is internal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__ as __version__
from .exceptions import (
    Abort,
    ConfigurationError,
    DefinitionError,
    DefinitionMismatchError,
    IdempotencyBodyMalformed,
    IdempotencyError,
    IdempotencyKeyInFlight,
    IdempotencyKeyInvalid,
    IdempotencyKeyMissing,
    IdempotencyKeyReused,
    IdempotencyResponseNotStored,
    IdempotencyScopeMissing,
    InvalidInputError,
    NotInTransactionError,
    NotSerializableError,
    OutboxError,
    SagaflowError,
    UnknownSagaError,
)
from .outbox.consumers import Event, consumer
from .outbox.publish import publish
from .retry import Retry
from .saga.definition import Context, SagaDefinition, StepDefinition
from .saga.registry import define, get_definition

if TYPE_CHECKING:  # the models import only once Django's apps are ready
    from .models import Saga

__all__ = [
    "Abort",
    "ConfigurationError",
    "Context",
    "DefinitionError",
    "DefinitionMismatchError",
    "Event",
    "IdempotencyBodyMalformed",
    "IdempotencyError",
    "IdempotencyKeyInFlight",
    "IdempotencyKeyInvalid",
    "IdempotencyKeyMissing",
    "IdempotencyKeyReused",
    "IdempotencyResponseNotStored",
    "IdempotencyScopeMissing",
    "InvalidInputError",
    "NotInTransactionError",
    "NotSerializableError",
    "OutboxError",
    "Retry",
    "SagaDefinition",
    "SagaflowError",
    "StepDefinition",
    "UnknownSagaError",
    "consumer",
    "define",
    "get_definition",
    "publish",
    "start",
]


def start(
    name: str, data: object = None, *, key: str | None = None, correlation_id: str | None = None
) -> Saga:
    """Start the saga registered as ``name``; see ``SagaDefinition.start``.

    Returns the new run (a ``sagaflow.models.Saga``), or the existing one for a
    ``key`` already used.
    """
    return get_definition(name).start(data, key=key, correlation_id=correlation_id)
