"""The demo is safe to expose: DEBUG is off unless asked for, server errors are logged
and show no traceback, no other site can frame it, and the server profile that
docker-compose.yml and the Dockerfile run passes ``manage.py check --deploy``.

The server tests run gunicorn with the demo's own settings (not the suite's), with
``DJANGO_DEBUG`` removed from its environment, pointed at a database that refuses
connections: the quickest honest way to make a real request fail.
"""

from __future__ import annotations

import importlib.metadata
import re
import secrets
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
import uuid

import pytest
import yaml
from django.conf import settings
from django.test import Client

from tests.processes import ROOT, child_env, wait_until
from tests.shop_support import WebServer

pytestmark = pytest.mark.timeout(90)

REFUSED_DATABASE = "postgres://postgres@127.0.0.1:9/unreachable"


def run(args: list[str], *, env: dict[str, str], unset: tuple[str, ...] = ()):
    environment = child_env(**env)
    for name in (*unset, "DJANGO_DEBUG"):
        environment.pop(name, None)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=environment, capture_output=True, text=True
    )


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.mark.parametrize(
    ("value", "debug"), [(None, False), ("0", False), ("", False), ("true", False), ("1", True)]
)
def test_debug_is_off_unless_turned_on(value, debug):
    env = {"DJANGO_SETTINGS_MODULE": "demo_shop.settings"}
    script = "import demo_shop.settings as s; print(s.DEBUG)"
    if value is not None:
        script = f"import os; os.environ['DJANGO_DEBUG'] = {value!r}; {script}"
    result = run(["-c", script], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(debug)


@pytest.fixture(scope="module")
def failing_server():
    env = {
        "DJANGO_SETTINGS_MODULE": "demo_shop.settings",
        "DATABASE_URL": REFUSED_DATABASE,
        "CELERY_BROKER_URL": "memory://",
    }
    with WebServer(env=env, unset=("DJANGO_DEBUG",)) as web:
        yield web


def test_a_server_error_shows_no_traceback_and_is_logged_to_stderr(failing_server):
    status, headers, body = get(f"{failing_server.url}/")
    assert status == 500
    assert b"Traceback" not in body and b"OperationalError" not in body
    assert b"Server Error (500)" in body
    assert headers["X-Frame-Options"] == "DENY"
    log = wait_until(
        lambda: (
            "ERROR django.request Internal Server Error: /\n" in failing_server.text()
            and failing_server.text()
        ),
        timeout=10,
        what="the 500 in gunicorn's stderr",
    )
    assert "Traceback" in log and "OperationalError" in log


def test_an_api_server_error_is_a_problem_without_details(failing_server):
    status, headers, body = get(f"{failing_server.url}/api/session")  # saving it fails
    assert status == 500
    assert headers["Content-Type"] == "application/problem+json"
    assert b"Traceback" not in body and b"127.0.0.1" not in body
    assert b'"code": "server-error"' in body
    wait_until(
        lambda: "Internal Server Error: /api/session" in failing_server.text(),
        timeout=10,
        what="the API's 500 in gunicorn's stderr",
    )


def test_a_404_lists_no_routes(failing_server):
    status, headers, body = get(f"{failing_server.url}/no-such-page")
    assert status == 404
    assert b"api/checkout" not in body and b"URLconf" not in body
    assert headers["X-Frame-Options"] == "DENY"
    status, headers, body = get(f"{failing_server.url}/api/orders/{uuid.uuid4()}/x")
    assert (status, headers["Content-Type"]) == (404, "application/problem+json")
    assert b"api/checkout" not in body


@pytest.mark.django_db
def test_no_page_can_be_framed_by_another_site():
    assert "django.middleware.clickjacking.XFrameOptionsMiddleware" in settings.MIDDLEWARE
    for path in ("/admin/login/", "/", "/api/session"):
        assert Client().get(path)["X-Frame-Options"] == "DENY", path


# --- the server profile, as docker-compose.yml and the Dockerfile run it ---------------


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def compose_environment(**shell: str) -> dict[str, str]:
    """The app services' environment, interpolated as compose does with ``shell``."""
    environment = {}
    for name, value in compose()["x-app"]["environment"].items():
        found = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", str(value))
        environment[name] = (shell.get(found[1]) or found[2]) if found else str(value)
        assert "$" not in environment[name], f"{name}: only ${{NAME:-default}} is handled here"
    return environment


def test_compose_takes_the_secret_from_the_shell_and_names_its_hosts():
    app = compose()["x-app"]["environment"]
    assert app["DJANGO_SETTINGS_MODULE"] == "demo_shop.settings_production"
    assert app["DJANGO_SECRET_KEY"] == "${DJANGO_SECRET_KEY:-}"  # nothing written here
    assert "DJANGO_DEBUG" not in app
    hosts = compose_environment()["DJANGO_ALLOWED_HOSTS"].split(",")
    assert "*" not in hosts and hosts
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_the_dockerfile_runs_the_server_profile_with_everything_it_imports():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "DJANGO_SETTINGS_MODULE=demo_shop.settings_production" in dockerfile
    assert "'.[demo]'" in dockerfile
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def requirements(extra: str) -> list[str]:
        """The extra's requirements, its ``sagaflow[...]`` references expanded."""
        found = []
        for requirement in extras[extra]:
            if requirement.startswith("sagaflow["):
                inner = requirement[len("sagaflow[") : requirement.index("]")]
                found += [r for name in inner.split(",") for r in requirements(name.strip())]
            else:
                found.append(requirement)
        return found

    wanted = {
        re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0].lower()
        for requirement in project["dependencies"] + requirements("demo")
    }
    distributions = importlib.metadata.packages_distributions()
    for app in settings.INSTALLED_APPS:
        top = app.split(".")[0]
        if top in ("django", "sagaflow", "demo_shop", "tests"):
            continue
        names = {name.lower() for name in distributions[top]}
        assert names & wanted, f"{app} is installed by {names}, not by the demo extra"


def test_the_compose_settings_pass_check_deploy():
    key = secrets.token_urlsafe(50)
    result = run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=compose_environment(DJANGO_SECRET_KEY=key),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "System check identified no issues (2 silenced)."


@pytest.mark.parametrize(
    ("shell", "unset", "message"),
    [
        ({}, ("DJANGO_SECRET_KEY",), "DJANGO_SECRET_KEY is not set"),
        ({"DJANGO_ALLOWED_HOSTS": "*"}, (), "DJANGO_ALLOWED_HOSTS contains '*'"),
    ],
)
def test_the_server_profile_refuses_to_start_without_a_secret_or_with_any_host(
    shell, unset, message
):
    env = compose_environment(DJANGO_SECRET_KEY=secrets.token_urlsafe(50), **shell)
    for name in unset:
        env[name] = ""
    result = run(["manage.py", "check"], env=env)
    assert result.returncode != 0
    assert message in result.stderr
