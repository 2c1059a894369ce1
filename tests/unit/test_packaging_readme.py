"""The README's Install section, checked without installing anything.

Its settings block is executed on top of the settings that ``django-admin
startproject`` writes (Django's own template), and sagaflow's system checks must
find nothing to say about the result. ``make install-check`` runs the whole
section for real, with a worker.
"""

import tomllib
from pathlib import Path

import django
from django.template import Context, Engine
from django.test import override_settings

from sagaflow import checks
from sagaflow.conf import unknown_keys
from tests.packaging import readme

ROOT = Path(__file__).resolve().parents[2]
AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"


def startproject_settings(tmp_path: Path) -> dict:
    """The namespace of a fresh ``mysite/settings.py``, as this Django writes it."""
    template = Path(django.__file__).parent / "conf/project_template/project_name/settings.py-tpl"
    code = (
        Engine()
        .from_string(template.read_text())
        .render(
            Context(
                {
                    "project_name": "mysite",
                    "secret_key": "x",
                    "django_version": "x",
                    "docs_version": "dev",
                },
                autoescape=False,
            )
        )
    )
    namespace = {"__file__": str(tmp_path / "mysite" / "settings.py")}
    exec(compile(code, "settings.py", "exec"), namespace)
    return namespace


def blocks() -> dict[str, readme.InstallBlock]:
    return {block.path: block for block in readme.install_blocks()}


def test_the_section_has_every_file_a_new_project_needs():
    assert list(blocks()) == [
        "mysite/settings.py",
        "mysite/celery.py",
        "mysite/__init__.py",
        "shop/sagas.py",
    ]
    assert blocks()["mysite/settings.py"].append
    for block in blocks().values():
        compile(block.code, block.path, "exec")
    celery = blocks()["mysite/celery.py"].code
    assert 'app.config_from_object("django.conf:settings", namespace="CELERY")' in celery
    assert "app.autodiscover_tasks()" in celery
    assert "celery_app" in blocks()["mysite/__init__.py"].code


def test_the_settings_block_pasted_into_startproject_passes_sagaflows_checks(tmp_path):
    namespace = startproject_settings(tmp_path)
    exec(compile(blocks()["mysite/settings.py"].code, "settings.py", "exec"), namespace)

    assert namespace["INSTALLED_APPS"][-2:] == ["sagaflow", "shop"]
    middleware = namespace["MIDDLEWARE"]
    assert middleware[middleware.index(AUTH) + 1] == checks.MIDDLEWARE
    assert namespace["DATABASES"]["default"]["ENGINE"] == "django.db.backends.postgresql"
    assert namespace["SAGAFLOW"] and unknown_keys(namespace["SAGAFLOW"]) == {}
    celery = {name: value for name, value in namespace.items() if name.startswith("CELERY_")}
    assert "CELERY_BROKER_URL" in celery
    with override_settings(**celery, MIDDLEWARE=middleware, SAGAFLOW=namespace["SAGAFLOW"]):
        assert checks.check_celery_settings() == []
        assert checks.check_middleware() == []
        assert checks.check_visibility_timeout() == []
        assert checks.check_settings_dict() == []


def test_the_pip_line_names_an_extra_that_exists():
    requirement = readme.pip_requirement()
    assert requirement.startswith("sagaflow[") and requirement.endswith("]")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra in requirement.removeprefix("sagaflow[").removesuffix("]").split(","):
        assert extra in extras
