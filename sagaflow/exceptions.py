"""Every error sagaflow raises; one root so callers can catch them all."""

from __future__ import annotations


class SagaflowError(Exception):
    """Root of every sagaflow error."""


class ConfigurationError(SagaflowError):
    """sagaflow is set up wrongly (a setting, a definition); fix the code or settings."""


class DefinitionError(ConfigurationError):
    """A saga definition is malformed; raised at import time, naming the culprit."""


class UnknownSagaError(SagaflowError, LookupError):
    """No saga definition is registered under the name asked for."""


class InvalidInputError(SagaflowError, ValueError):
    """Input to the public API was refused; nothing was written."""


class NotSerializableError(InvalidInputError):
    """A value that must be stored as JSON is not JSON-serialisable."""


class DefinitionMismatchError(SagaflowError):
    """A stored run no longer matches the code that defines its saga."""


class Abort(SagaflowError):
    """Raised by a step to refuse the operation: no retry, compensation starts."""

    def __init__(self, reason: str = "aborted") -> None:
        super().__init__(reason)
        self.reason = reason


class ActionRefused(SagaflowError):
    """An operator action (retry, compensate) does not apply to the run's state."""


class FaultInjected(SagaflowError):
    """Raised by an armed fault point (see ``sagaflow.testing``)."""


# --- errors answered to HTTP clients (idempotency keys) -------------------------------


class IdempotencyError(SagaflowError):
    """A request refused by the idempotency-key policy; rendered as problem+json.

    ``status_code`` and ``code`` are public and stable: clients branch on ``code``.
    """

    status_code: int = 400
    code: str = "idempotency-error"
    title: str = "Idempotency-Key error"

    def __init__(self, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class IdempotencyKeyMissing(IdempotencyError):
    status_code = 400
    code = "idempotency-key-missing"
    title = "Idempotency-Key header required"


class IdempotencyKeyInvalid(IdempotencyError):
    status_code = 400
    code = "idempotency-key-invalid"
    title = "Idempotency-Key header malformed"


class IdempotencyScopeMissing(IdempotencyError):
    status_code = 400
    code = "idempotency-scope-missing"
    title = "Idempotency-Key needs an identified client"


class IdempotencyBodyMalformed(IdempotencyError):
    status_code = 400
    code = "request-body-malformed"
    title = "Request body cannot be read"


class IdempotencyKeyInFlight(IdempotencyError):
    status_code = 409
    code = "idempotency-key-in-flight"
    title = "A request with this Idempotency-Key is still being processed"


class IdempotencyResponseNotStored(IdempotencyError):
    status_code = 409
    code = "idempotency-response-not-stored"
    title = "The response to this Idempotency-Key cannot be replayed"


class IdempotencyKeyReused(IdempotencyError):
    status_code = 422
    code = "idempotency-key-reused"
    title = "Idempotency-Key already used for a different request"


class IdempotencyStoreUnavailable(IdempotencyError):
    """The keys' database could not be reached: nothing was done, retry the same key."""

    status_code = 503
    code = "idempotency-store-unavailable"
    title = "The Idempotency-Key store is unavailable"


# --- transactional outbox -------------------------------------------------------------


class OutboxError(SagaflowError):
    """Root of the outbox's errors."""


class NotInTransactionError(OutboxError, InvalidInputError):
    """``publish`` was called outside ``transaction.atomic()``; nothing was written."""
