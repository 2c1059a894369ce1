"""The saga definitions known to this process: ``define`` creates and registers one,
workers look them up by the name stored with each run. Filled by importing every
installed app's ``sagas.py``."""

from __future__ import annotations

import sys
from datetime import timedelta

from django.utils.module_loading import autodiscover_modules

from ..exceptions import DefinitionError, UnknownSagaError
from .definition import SagaDefinition

_definitions: dict[str, SagaDefinition] = {}


def define(
    name: str, *, deadline: timedelta | None = None, local_steps: bool = False
) -> SagaDefinition:
    """Create and register a saga definition (call it at module level in ``sagas.py``).

    ``local_steps=True`` runs each step that follows a recorded one in the same
    Celery task, right after the record's commit (which also claims it), instead of
    sending it to the broker: one commit and no broker hop per step, at the price of
    one worker process carrying the run from start to end. See the README.
    """
    caller = sys._getframe(1).f_globals.get("__name__", "?")
    definition = SagaDefinition(name, deadline=deadline, module=caller, local_steps=local_steps)
    register(definition)
    return definition


def register(definition: SagaDefinition) -> None:
    existing = _definitions.get(definition.name)
    if existing is not None and existing.module != definition.module:
        raise DefinitionError(
            f"Saga name {definition.name!r} is defined twice: in {existing.module} and in "
            f"{definition.module}. Saga names are stored with every run; give each one its own."
        )
    _definitions[definition.name] = definition


def unregister(name: str) -> None:
    """Forget a definition (tests that define sagas on the fly clean up with this)."""
    _definitions.pop(name, None)


def get_definition(name: str) -> SagaDefinition:
    try:
        return _definitions[name]
    except KeyError:
        known = ", ".join(sorted(_definitions)) or "none"
        raise UnknownSagaError(
            f"No saga named {name!r} is defined (known: {known}). Define it with "
            f"sagaflow.define({name!r}) in an installed app's sagas.py."
        ) from None


def all_definitions() -> dict[str, SagaDefinition]:
    return dict(_definitions)


def autodiscover() -> None:
    """Import ``sagas`` from every installed app, like the admin does with ``admin``."""
    autodiscover_modules("sagas")
