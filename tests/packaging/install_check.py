"""``make install-check``: the README's Install section, followed from a clean directory.

In a new temporary directory: a virtualenv (``--python``), the built wheel with the
README's extras and ``--django``, then every ``$`` command and file block of the Install
section in order (tests/packaging/readme.py reads them): ``startproject``, ``startapp``,
the settings, ``celery.py``, ``__init__.py``, the first saga, ``migrate``, a real
``celery worker`` and ``celery beat``, the saga started from ``manage.py shell`` and
``manage.py sagaflow status``. On top of the README it adds what a project does next:
a model, an ``@sagaflow.consumer`` and an ``@idempotent`` view that writes, publishes
and starts a saga in one transaction, driven twice with the same key.

Two values in the settings block are replaced, each exactly once: the database name
(a fresh database beside ``DATABASE_URL``'s, dropped at the end) and the broker URL
(``CELERY_BROKER_URL``). Everything else is the README's text. Prints what happened;
exits 1 on the first thing that did not.

Usage: ``python tests/packaging/install_check.py --python python3.13 --django
'Django~=6.1.0' dist/sagaflow-*.whl``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.packaging import readme

#: What the check adds to the README's project (shop/ is the README's app).
MODELS = """
from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=200)
    seen = models.BooleanField(default=False)
"""

CONSUMER = """

from .models import Note


@sagaflow.consumer("note.created")
def mark_seen(event):
    Note.objects.filter(pk=event.payload["note_id"]).update(seen=True)
"""

VIEWS = """
import json

from django.db import transaction
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

import sagaflow
from sagaflow.idempotency import idempotent

from .models import Note


@csrf_exempt
@idempotent(required=True)
def create_note(request):
    text = json.loads(request.body)["text"]
    with transaction.atomic():
        note = Note.objects.create(text=text)
        sagaflow.publish("note.created", {"note_id": note.pk}, key=f"note-{note.pk}")
        saga = sagaflow.start("hello", {"name": text}, key=f"note-{note.pk}")
    return JsonResponse({"note": note.pk, "saga": str(saga.id)}, status=201)
"""

URLS = """
from shop.views import create_note

urlpatterns += [path("notes", create_note)]
"""

#: Run in the project with its own Python: the HTTP side through Django's test client
#: (a logged-in user: keys are scoped to users), then waits for the worker's results.
DRIVE = """
import json, os, sys, time
from importlib.metadata import version

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
django.setup()

from django.contrib.auth.models import User
from django.test import Client

import sagaflow
from sagaflow.models import InboxMessage, OutboxEvent, Saga
from shop.models import Note

print(f"sagaflow {sagaflow.__version__} from {os.path.dirname(sagaflow.__file__)}")
print(f"Django {django.get_version()}, Python {sys.version.split()[0]}, " + ", ".join(
    f"{name} {version(name)}" for name in ("celery", "kombu", "redis", "psycopg")
))
client = Client(SERVER_NAME="localhost")
client.force_login(User.objects.create_user("alice"))
body = json.dumps({"text": "first note"})

missing = client.post("/notes", body, content_type="application/json")
print(f"POST /notes without a key: {missing.status_code} {missing['Content-Type']}")
first = client.post("/notes", body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k-1")
again = client.post("/notes", body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k-1")
print(f"POST /notes, key k-1: {first.status_code} {first.content.decode()}")
print(
    f"POST /notes, key k-1 again: {again.status_code}, Idempotent-Replayed: "
    f"{again.get('Idempotent-Replayed')}, same body: {again.content == first.content}"
)
other = client.post(
    "/notes", json.dumps({"text": "changed"}), content_type="application/json",
    HTTP_IDEMPOTENCY_KEY="k-1",
)
print(f"POST /notes, key k-1 with another body: {other.status_code}")
ok = (
    missing.status_code == 400 and first.status_code == 201 and again.status_code == 201
    and again.get("Idempotent-Replayed") == "true" and again.content == first.content
    and other.status_code == 422 and Note.objects.count() == 1
)

deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    live = Saga.objects.exclude(state="completed").count()
    if not live and Note.objects.filter(seen=True).count() == 1:
        break
    time.sleep(0.2)
for saga in Saga.objects.order_by("created_at"):
    print(f"saga {saga.name} {saga.id}: {saga.state}, results {json.dumps(saga.results)}")
print(f"notes: {list(Note.objects.values_list('text', 'seen'))}")
print(f"outbox: {list(OutboxEvent.objects.values_list('topic', 'state'))}")
print(f"inbox: {list(InboxMessage.objects.values_list('consumer', 'state'))}")
ok = ok and Saga.objects.filter(state="completed").count() == Saga.objects.count() == 2
ok = ok and Note.objects.filter(seen=True).count() == 1
sys.exit(0 if ok else 1)
"""


class Failed(Exception):
    pass


def say(what: str) -> None:
    print(f"\n== {what}", flush=True)


def run(argv: list[str], cwd: Path, env: dict[str, str], quiet: bool = False) -> str:
    """Run ``argv`` to completion; print its output unless ``quiet``; fail on non-zero."""
    print("$ " + shlex.join(argv), flush=True)
    done = subprocess.run(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = done.stdout
    if (not quiet or done.returncode) and output.strip():
        print(textwrap.indent(output.rstrip(), "  "), flush=True)
    if done.returncode:
        raise Failed(f"{argv[0]} exited {done.returncode}")
    return output


class Background:
    """A long-running process (worker, beat) whose output goes to a file."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        print("$ " + shlex.join(argv) + "   (in the background)", flush=True)
        self.log = log
        self._file = log.open("w")
        self.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=self._file, stderr=subprocess.STDOUT
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str, done: Callable[[str], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done(self.text()):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise Failed(f"{what}: not seen within {timeout:g}s\n{self.text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._file.close()


def replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise Failed(f"the README's settings block should contain {old!r} exactly once")
    return text.replace(old, new)


def settings_block(code: str, database: str, url: str, broker: str) -> str:
    """The README's settings block pointed at this check's database and broker."""
    parts = urlsplit(url)
    code = replace_once(code, '"NAME": "mysite"', f'"NAME": "{database}"')
    code = replace_once(code, '"USER": "postgres"', f'"USER": "{parts.username or "postgres"}"')
    code = replace_once(code, '"HOST": "localhost"', f'"HOST": "{parts.hostname or "localhost"}"')
    code = replace_once(code, '"PORT": 5432', f'"PORT": {parts.port or 5432}')
    return replace_once(code, '"redis://localhost:6379/0"', f'"{broker}"')


def admin_connection(url: str) -> psycopg.Connection:
    parts = urlsplit(url)
    return psycopg.connect(
        host=parts.hostname or "localhost",
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password,
        dbname="postgres",
        autocommit=True,
    )


def recreate_database(url: str, name: str, drop_only: bool = False) -> None:
    with admin_connection(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            conn.execute(f'CREATE DATABASE "{name}"')


def task_counts(log: str) -> str:
    """``name: received/succeeded`` for every task the worker logged."""
    received, succeeded = Counter(), Counter()
    for line in log.splitlines():
        if "] received" in line and "Task " in line:
            received[line.split("Task ", 1)[1].split("[", 1)[0]] += 1
        elif "] succeeded in" in line and "Task " in line:
            succeeded[line.split("Task ", 1)[1].split("[", 1)[0]] += 1
    return ", ".join(f"{name} {received[name]}/{succeeded[name]}" for name in sorted(received))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--python", default="python3")
    parser.add_argument("--django", default="Django")
    parser.add_argument("--keep", action="store_true", help="keep the directory and database")
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL") or "postgres://postgres@localhost:5432/sagaflow"
    broker = os.environ.get("CELERY_BROKER_URL") or "redis://localhost:6379/0"
    database = f"{urlsplit(url).path.lstrip('/') or 'sagaflow'}_install_check"
    wheel = args.wheel.resolve()
    root = Path(tempfile.mkdtemp(prefix="sagaflow-install-check-"))
    venv = root / "venv"
    bin_ = venv / "bin"
    # Nothing of this checkout may leak in: the project must import the installed wheel.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["PATH"] = f"{bin_}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    background: list[Background] = []
    started = time.monotonic()
    project = root
    blocks = readme.install_blocks()
    try:
        say(f"a new virtualenv in an empty directory ({args.python})")
        run([args.python, "-m", "venv", str(venv)], root, env)
        for argv in readme.commands():
            if argv[:2] == ["pip", "install"]:
                extras = argv[2].removeprefix("sagaflow")
                say(f"README: pip install {argv[2]} (the built wheel), with {args.django}")
                pip = [str(bin_ / "pip"), "install", "-q", f"{wheel}{extras}", args.django]
                run(pip, root, env)
                run([str(bin_ / "pip"), "list"], root, env, quiet=True)
            elif argv[0] == "django-admin":
                say("README: " + " ".join(argv))
                run([str(bin_ / "django-admin"), *argv[1:3]], root, env)
                project = root / argv[2]
            elif argv[0] == "createdb":
                say(f"README: createdb (here: a fresh database {database!r})")
                recreate_database(url, database)
                say("README: the file blocks")
                for block in blocks:
                    target = project / block.path
                    code = block.code
                    if block.path.endswith("settings.py"):
                        code = settings_block(code, database, url, broker)
                    if block.append:
                        target.write_text(target.read_text() + "\n\n" + code)
                    else:
                        target.write_text(code)
                    verb = "appended to" if block.append else "written:"
                    print(f"{verb} {block.path} ({len(code.splitlines())} lines)")
                say("the check's own additions: a model, a consumer, an idempotent view")
                (project / "shop/models.py").write_text(MODELS)
                sagas = project / "shop/sagas.py"
                sagas.write_text(sagas.read_text() + CONSUMER)
                (project / "shop/views.py").write_text(VIEWS)
                urls = project / "mysite/urls.py"
                urls.write_text(urls.read_text() + URLS)
                run([str(bin_ / "python"), "manage.py", "makemigrations", "shop"], project, env)
                run([str(bin_ / "python"), "manage.py", "check"], project, env)
            elif argv[0] == "celery":
                say("README: " + " ".join(argv))
                kind = argv[3]
                extra = ["-s", str(root / "celerybeat-schedule")] if kind == "beat" else []
                process = Background(
                    [str(bin_ / "celery"), *argv[1:], *extra], project, env, root / f"{kind}.log"
                )
                background.append(process)
                if kind == "worker":
                    process.wait_for("the worker's 'ready'", lambda t: " ready." in t, 90)
                else:
                    process.wait_for("beat starting", lambda t: "beat: Starting" in t, 60)
                print(f"{kind} is up (pid {process.process.pid})")
            elif argv[:2] == ["python", "manage.py"]:
                if argv[2] == "sagaflow":
                    say("the check: the idempotent view and the consumer, with the worker")
                    run([str(bin_ / "python"), "drive.py"], project, env)
                say("README: " + " ".join(argv))
                run([str(bin_ / "python"), *argv[1:]], project, env)
                if argv[2] == "startapp":
                    (project / "drive.py").write_text(DRIVE)
            else:
                raise Failed(f"no way to run the README's command {argv}")

        say("beat: the sweeper's schedule reaches the worker")
        worker = background[0]
        worker.wait_for(
            "a sagaflow.sweep run", lambda t: "Task sagaflow.sweep[" in t and "succeeded" in t, 30
        )
        print(f"worker ran (received/succeeded): {task_counts(worker.text())}")
        errors = [line for line in worker.text().splitlines() if "ERROR" in line]
        for line in errors[:10]:
            print(f"  worker error: {line}")
        if errors:
            raise Failed(f"{len(errors)} ERROR lines in the worker's log")
    except Failed as failure:
        print(f"\nFAILED: {failure}")
        for process in background:
            print(f"--- {process.log.name} (end) ---\n{process.text()[-4000:]}")
        return 1
    finally:
        for process in reversed(background):
            process.stop()
        if not args.keep:
            recreate_database(url, database, drop_only=True)
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"\nOK: the README's Install section works from a clean directory "
        f"({time.monotonic() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
