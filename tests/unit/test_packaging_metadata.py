"""What pip sees: the dependencies a project is made to install, and the version."""

import tomllib
from importlib.metadata import metadata, version
from pathlib import Path

from packaging.requirements import Requirement

import sagaflow

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_core_dependencies_force_no_broker_driver_build_or_scheduler():
    """django-celery-beat pins Django<6.1 and sagaflow never imports it; the Redis client
    and psycopg's wheels are the project's choice (RabbitMQ, psycopg built locally).
    http-sf parses the Idempotency-Key header (RFC 8941), pure Python."""
    core = [Requirement(line) for line in PROJECT["dependencies"]]
    assert sorted(r.name.lower() for r in core) == ["celery", "django", "http-sf", "psycopg"]
    assert all(not r.extras for r in core)
    extras = PROJECT["optional-dependencies"]
    assert extras["beat"] == ["django-celery-beat>=2.7"]
    assert [Requirement(r).extras for r in extras["redis"] + extras["binary"]] == [
        {"redis"},
        {"binary"},
    ]
    assert not any("celery-beat" in line for line in extras["test"])


def test_version_comes_from_the_installed_metadata():
    assert sagaflow.__version__ == version("sagaflow") == PROJECT["version"]


def test_classifiers_name_the_supported_django_and_python_releases():
    classifiers = set(metadata("sagaflow").get_all("Classifier"))
    for release in ("5.2", "6.0", "6.1"):
        assert f"Framework :: Django :: {release}" in classifiers
    for release in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {release}" in classifiers
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
