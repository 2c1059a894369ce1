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


class FaultInjected(SagaflowError):
    """Raised by an armed fault point (see ``sagaflow.testing``)."""
