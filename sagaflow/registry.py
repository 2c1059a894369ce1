"""The saga definitions known to this process, filled by importing apps' ``sagas.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.utils.module_loading import autodiscover_modules

from .exceptions import DefinitionError, UnknownSagaError

if TYPE_CHECKING:
    from .definition import SagaDefinition

_definitions: dict[str, SagaDefinition] = {}


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
