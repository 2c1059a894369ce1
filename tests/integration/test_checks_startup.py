"""Configuration mistakes are system check errors at start-up, never tracebacks or raw
SQL errors later: a typo in ``SAGAFLOW`` (``sagaflow.E004``) and a database other than
PostgreSQL (``sagaflow.E003``)."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.core.checks import run_checks

from sagaflow import ConfigurationError
from sagaflow.conf import conf

ROOT = Path(__file__).resolve().parents[2]


def messages(check_id):
    return [m for m in run_checks() if m.id == check_id]


def test_an_unknown_key_is_an_error_with_a_suggestion_not_a_traceback(settings):
    settings.SAGAFLOW = {"LEASE_GRACES": 1.0, "lease_grace": 2.0, "XYZZY": 3}
    found = {m.msg: m.hint for m in messages("sagaflow.E004")}
    assert found == {
        "Unknown key 'LEASE_GRACES' in settings.SAGAFLOW; did you mean 'LEASE_GRACE'?": (
            "Rename it to 'LEASE_GRACE'."
        ),
        "Unknown key 'XYZZY' in settings.SAGAFLOW.": (
            "Remove it; the known keys are the fields of sagaflow.conf.Defaults."
        ),
        "Unknown key 'lease_grace' in settings.SAGAFLOW; did you mean 'LEASE_GRACE'?": (
            "Rename it to 'LEASE_GRACE'."
        ),
    }
    # A process that skips the checks (a worker) still refuses, with the same suggestion.
    with pytest.raises(ConfigurationError, match=re.escape("(did you mean LEASE_GRACE?)")):
        _ = conf.LEASE_GRACE


def test_a_sagaflow_setting_that_is_not_a_dict_is_an_error(settings):
    settings.SAGAFLOW = [("LEASE_GRACE", 1.0)]
    assert [m.msg for m in messages("sagaflow.E004")] == [
        "settings.SAGAFLOW must be a dict, got list."
    ]


def test_known_keys_pass(settings):
    settings.SAGAFLOW = {"LEASE_GRACE": 1.0}
    assert messages("sagaflow.E004") == []


#: A project on SQLite, configured in code: ``check`` and ``sagaflow status`` run as a
#: user runs them, in a process of their own.
PROJECT = textwrap.dedent(
    """
    import json, sys
    from django.conf import settings
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "sagaflow"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": sys.argv[3]}},
        SAGAFLOW=json.loads(sys.argv[1]),
        SILENCED_SYSTEM_CHECKS=json.loads(sys.argv[2]),
        CELERY_BROKER_URL="memory://",
        CELERY_TASK_ACKS_LATE=True,
        CELERY_TASK_REJECT_ON_WORKER_LOST=True,
        CELERY_WORKER_PREFETCH_MULTIPLIER=1,
        USE_TZ=True,
    )
    from django.core.management import execute_from_command_line
    execute_from_command_line(["manage.py", *sys.argv[4:]])
    """
)


def manage(*argv, sagaflow=None, silenced=(), database=":memory:"):
    return subprocess.run(
        [
            sys.executable,
            "-c",
            PROJECT,
            json.dumps(sagaflow or {}),
            json.dumps([*silenced]),
            str(database),
            *argv,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sqlite_is_refused_at_start_up_with_what_needs_postgresql():
    done = manage("check", sagaflow={"OUTBOX_BATCHSIZE": 10})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "(sagaflow.E003) sagaflow needs PostgreSQL, and the default database is sqlite" in (
        done.stderr
    )
    for needs in ("sagaflow.publish", "relay_outbox", "sagaflow status", "the outbox admin"):
        assert needs in done.stderr
    assert (
        "(sagaflow.E004) Unknown key 'OUTBOX_BATCHSIZE' in settings.SAGAFLOW; did you mean "
        "'OUTBOX_BATCH_SIZE'?" in done.stderr
    )


def test_sagaflow_status_on_sqlite_stops_at_the_check_not_at_a_sql_error(tmp_path):
    """Without the check it fails in outbox SQL that SQLite cannot run."""
    database = tmp_path / "db.sqlite3"
    migrated = manage("migrate", "-v0", silenced=["sagaflow.E003"], database=database)
    assert migrated.returncode == 0, migrated.stderr
    done = manage("sagaflow", "status", database=database)
    assert done.returncode == 1
    assert "sagaflow.E003" in done.stderr
    assert "Traceback" not in done.stderr and "OperationalError" not in done.stderr


def test_a_project_that_silences_e003_deliberately_passes():
    """It still hears that SQLite outside DEBUG is unsafe for concurrent workers."""
    done = manage("check", silenced=["sagaflow.E003"])
    assert done.returncode == 0, done.stderr
    assert "sagaflow.E003" not in done.stderr and "(1 silenced)" in done.stderr
    assert "(sagaflow.W005) sagaflow runs on SQLite outside DEBUG" in done.stderr
