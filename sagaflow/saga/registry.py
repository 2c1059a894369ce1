"""The saga definitions known to this process: ``define`` creates and registers one,
workers look them up by the name and version stored with each run. Filled by
importing every installed app's ``sagas.py``.

Definitions are keyed by (name, version): several versions of one saga live side
by side, new runs start on the highest, and each run is looked up by its own.
"""

from __future__ import annotations

import sys
from datetime import timedelta

from django.utils.module_loading import autodiscover_modules

from ..exceptions import DefinitionError, UnknownSagaError
from .definition import SagaDefinition

_definitions: dict[str, dict[int, SagaDefinition]] = {}


def define(
    name: str,
    *,
    deadline: timedelta | None = None,
    local_steps: bool = False,
    version: int = 1,
) -> SagaDefinition:
    """Create and register a saga definition (call it at module level in ``sagas.py``).

    ``version`` (default 1): define a new version, with a higher number, when the
    steps change, and keep the old one while its runs are in flight: each run
    records its version and runs that version's steps; ``start`` uses the highest.

    ``local_steps=True`` runs each step that follows a recorded one in the same
    Celery task, right after the record's commit (which also claims it), instead of
    sending it to the broker: one commit and no broker hop per step, at the price of
    one worker process carrying the run from start to end. See the README.
    """
    caller = sys._getframe(1).f_globals.get("__name__", "?")
    definition = SagaDefinition(
        name, deadline=deadline, module=caller, local_steps=local_steps, version=version
    )
    register(definition)
    return definition


def register(definition: SagaDefinition) -> None:
    versions = _definitions.setdefault(definition.name, {})
    existing = versions.get(definition.version)
    if existing is not None and existing.module != definition.module:
        raise DefinitionError(
            f"Version {definition.version} of saga {definition.name!r} is defined twice: in "
            f"{existing.module} and in {definition.module}. Saga names and versions are "
            f"stored with every run; give each saga its own name, and each change of its "
            f"steps a new version."
        )
    versions[definition.version] = definition


def unregister(name: str, version: int | None = None) -> None:
    """Forget one version of a definition, or all of them (``version=None``).

    Tests that define sagas on the fly clean up with this; it is also how a test
    pretends a deploy removed a version's code.
    """
    versions = _definitions.get(name)
    if versions is None:
        return
    if version is None:
        versions.clear()
    else:
        versions.pop(version, None)
    if not versions:
        _definitions.pop(name, None)


def get_definition(name: str, version: int | None = None) -> SagaDefinition:
    """The definition of ``name``: its highest version, or exactly ``version``.

    Raises :class:`UnknownSagaError`; for a ``version`` this process lacks, the
    message starts with "needs the code of version N of <name>", as the run waiting
    for it is reported.
    """
    versions = _definitions.get(name)
    if version is None:
        if versions:
            return versions[max(versions)]
        known = ", ".join(sorted(_definitions)) or "none"
        raise UnknownSagaError(
            f"No saga named {name!r} is defined (known: {known}). Define it with "
            f"sagaflow.define({name!r}) in an installed app's sagas.py."
        )
    definition = (versions or {}).get(version)
    if definition is not None:
        return definition
    if versions:
        have = ", ".join(str(v) for v in sorted(versions))
        why = f"this process defines version(s) {have} of it only"
    else:
        why = f"no saga named {name!r} is defined in this process"
    raise UnknownSagaError(
        f"{needs_code(name, version)}: {why}. Deploy "
        f"sagaflow.define({name!r}, version={version}) with its steps again; its runs wait "
        f"for it, then go on."
    )


def needs_code(name: str, version: int) -> str:
    """The words a run waiting for its code is reported with (status, admin, error)."""
    return f"needs the code of version {version} of {name}"


def highest(definition: SagaDefinition) -> SagaDefinition:
    """The highest registered version of ``definition``'s name, if it is registered
    (a definition built by hand and never registered starts as itself)."""
    versions = _definitions.get(definition.name, {})
    if versions.get(definition.version) is not definition:
        return definition
    return versions[max(versions)]


def versions_of(name: str) -> dict[int, SagaDefinition]:
    """Every registered version of ``name``, by version number."""
    return dict(sorted(_definitions.get(name, {}).items()))


def all_definitions() -> dict[str, SagaDefinition]:
    """The highest version of each saga name."""
    return {name: versions[max(versions)] for name, versions in _definitions.items()}


def all_versions() -> list[SagaDefinition]:
    """Every registered definition, each version of each name, by name then version."""
    return [
        _definitions[name][version]
        for name in sorted(_definitions)
        for version in sorted(_definitions[name])
    ]


def autodiscover() -> None:
    """Import ``sagas`` from every installed app, like the admin does with ``admin``."""
    autodiscover_modules("sagas")
