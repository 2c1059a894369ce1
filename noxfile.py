"""The test matrix (``make matrix``): the unit and integration tiers on the oldest and the
newest Django that sagaflow supports, each in a virtualenv of its own under ``.nox/``.

Every session runs against the same PostgreSQL and Redis, named by ``DATABASE_URL`` and
``CELERY_BROKER_URL`` (inherited from the environment, as for ``make test``), one after
the other: they share the test database's name. Arguments after ``--`` go to pytest.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
# A missing interpreter is a failure, not a silently skipped leg of the matrix.
nox.options.error_on_missing_interpreters = True
nox.options.download_python = "never"
nox.options.reuse_venv = "yes"

#: (Python, Django, extras). Django 5.2 LTS on the oldest Python; Django 6.1 needs
#: Python >= 3.12. django-celery-beat (in ``demo``) pins Django<6.1, so the 6.1 leg
#: runs without it: tests/settings.py leaves its app out when it is not installed.
MATRIX = [
    ("3.11", "5.2", "test,demo"),
    ("3.13", "6.1", "test"),
]


@nox.session
@nox.parametrize(("python", "django", "extras"), MATRIX, ids=[f"django-{d}" for _, d, _ in MATRIX])
def tests(session: nox.Session, django: str, extras: str) -> None:
    """tests/unit and tests/integration on one Django release series."""
    session.install("-e", f".[{extras}]", f"Django~={django}.0")
    session.run(
        "python", "-c", "import django, sys; print('Django', django.get_version(), sys.version)"
    )
    session.run(
        "pytest",
        "tests/unit",
        "tests/integration",
        "-q",
        "-p",
        "no:cacheprovider",
        *session.posargs,
    )
