# Everyday commands. `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DATABASE_URL ?= postgres://postgres@localhost:5432/sagaflow
export CELERY_BROKER_URL ?= redis://localhost:6379/0

.PHONY: install test lint docs demo bench clean browser-deps chaos matrix release install-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,demo]'
	touch $(STAMP)

install: $(STAMP)

# mypy ([tool.mypy] in pyproject.toml): strict on the public API, normal on the rest of
# sagaflow/, and tests/types' assert_type checks of what a user's code sees.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check sagaflow tests bench demo_shop
	$(BIN)/lint-imports
	$(BIN)/mypy
	DATABASE_URL= CELERY_BROKER_URL=memory:// $(BIN)/python manage.py makemigrations --check --dry-run

# The admin browser test drives Debian's Chromium; install it when we can (root, as in CI).
browser-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "chromium and chromium-driver are missing: the browser test will be skipped"; \
	  fi; \
	fi

# The documentation site (mkdocs.yml) into site/: the pages of docs/, the README's
# sections and the API reference from the docstrings. --strict: a broken link, a README
# section that is gone or a docstring mkdocstrings cannot read fails it. About 5 s.
$(VENV)/.docs-installed: $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# pytest exits 5 when it collected nothing: that must fail, and it does (non-zero).
test: $(STAMP) lint docs browser-deps
	$(BIN)/pytest

# The demo needs no services: SQLite, an in-memory broker and an in-process worker.
# With DATABASE_URL and CELERY_BROKER_URL both set in the environment it uses them
# instead (PostgreSQL, Redis and real worker processes); the defaults above do not count.
demo: $(STAMP)
	@if [ "$(origin DATABASE_URL)" = environment ] && [ "$(origin CELERY_BROKER_URL)" = environment ]; then \
		$(MAKE) --no-print-directory _demo; \
	else \
		env DATABASE_URL= CELERY_BROKER_URL=memory:// $(MAKE) --no-print-directory _demo; \
	fi
_demo:
	$(BIN)/python manage.py migrate --verbosity 0
	$(BIN)/python manage.py sagaflow_demo

# Ratios against references measured in the same run (docs/bench/); needs PostgreSQL and
# Redis. It empties tables, so it gets a database and a Redis index of its own.
BENCH_DATABASE_URL ?= postgres://postgres@localhost:5432/sagaflow_bench
BENCH_BROKER_URL ?= redis://localhost:6379/3

$(VENV)/.bench-installed: $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@

bench: $(VENV)/.bench-installed
	DATABASE_URL=$(BENCH_DATABASE_URL) CELERY_BROKER_URL=$(BENCH_BROKER_URL) $(BIN)/python bench/run.py

# The chaos suite's long tier: CHAOS_MINUTES of load with every fault kind, again and again,
# on a private PostgreSQL and Redis; then the control runs, which must find violations
# (exit 1): control-acks and control-publish are expected to find none (see
# docs/chaos/README.md), every other one must. Tables and plots go to docs/chaos/.
CHAOS_MINUTES ?= 15
CHAOS_SEED ?= 7
CHAOS_CONTROLS := control control-acks control-publish control-sweeper \
	control-lock control-deadline control-deploy control-clock
CHAOS_MUST_FAIL := control control-sweeper control-lock control-deadline control-deploy \
	control-clock
chaos: $(STAMP)
	$(BIN)/pip install --quiet -e '.[chaos]'
	$(BIN)/python -m tests.chaos.run --profile long --minutes $(CHAOS_MINUTES) \
		--seed $(CHAOS_SEED) --out docs/chaos
	@for p in $(CHAOS_CONTROLS); do \
		$(BIN)/python -m tests.chaos.run --profile $$p --seed $(CHAOS_SEED) --out docs/chaos; \
		echo "$$p: exit $$? (1 = violations found)"; \
	done
	@for p in $(CHAOS_MUST_FAIL); do \
		$(BIN)/python -c "import json,sys; v=json.load(open('docs/chaos/chaos-$$p.json'))['violations']; print('$$p:', v, 'violations'); sys.exit(v == 0)" || exit 1; \
	done

# nox, build and twine, for the three targets below.
$(VENV)/.dev-installed: $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The unit and integration tiers on Django 5.2 LTS (Python 3.11) and 6.1 (Python 3.13),
# each in its own nox virtualenv, against DATABASE_URL and CELERY_BROKER_URL (noxfile.py).
# Both Pythons must be on PATH as python3.11 and python3.13.
matrix: $(VENV)/.dev-installed
	$(BIN)/nox $(NOX_ARGS)

# The sdist and the wheel in dist/, checked by twine and for the files the sdist ships.
release: $(VENV)/.dev-installed
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*
	$(BIN)/python tests/packaging/check_dist.py dist

# From a clean temporary directory: a new virtualenv, the built wheel with Django 6.1,
# `django-admin startproject`, the README's Install blocks, a saga, a consumer and an
# idempotent view, run by a real `celery worker` (and beat) against PostgreSQL (a fresh
# database next to DATABASE_URL's, dropped afterwards) and CELERY_BROKER_URL.
INSTALL_CHECK_PYTHON ?= python3.13
INSTALL_CHECK_DJANGO ?= Django~=6.1.0
install-check: release
	$(BIN)/python tests/packaging/install_check.py --python $(INSTALL_CHECK_PYTHON) \
		--django '$(INSTALL_CHECK_DJANGO)' dist/*.whl

# The model-based test of the engine (tests/model) with its long profile: thousands of
# fresh random examples, longer ones, instead of make test's fixed hundred.
.PHONY: model-long
model-long: $(STAMP)
	SAGAFLOW_MODEL_PROFILE=long $(BIN)/pytest tests/model/test_engine_model.py -p no:cacheprovider

clean:
	rm -rf $(VENV) demo.sqlite3 .pytest_cache .nox build dist site
