# Everyday commands. `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DATABASE_URL ?= postgres://postgres@localhost:5432/sagaflow
export CELERY_BROKER_URL ?= redis://localhost:6379/0

.PHONY: install test lint demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check sagaflow tests bench demo_shop
	DATABASE_URL= CELERY_BROKER_URL=memory:// $(BIN)/python manage.py makemigrations --check --dry-run

# pytest exits 5 when it collected nothing: that must fail, and it does (non-zero).
test: $(STAMP) lint
	$(BIN)/pytest

# The demo needs no services: SQLite, an in-memory broker and an in-process worker.
demo: $(STAMP)
	env -u DATABASE_URL -u CELERY_BROKER_URL $(MAKE) --no-print-directory _demo
_demo:
	DATABASE_URL= CELERY_BROKER_URL=memory:// $(BIN)/python manage.py migrate --verbosity 0
	DATABASE_URL= CELERY_BROKER_URL=memory:// $(BIN)/python manage.py sagaflow_demo

bench: $(STAMP)
	$(BIN)/python bench/step_overhead.py

clean:
	rm -rf $(VENV) demo.sqlite3 .pytest_cache
