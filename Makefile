# Everyday commands. `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export DATABASE_URL ?= postgres://postgres@localhost:5432/sagaflow
export CELERY_BROKER_URL ?= redis://localhost:6379/0

.PHONY: install test lint demo bench clean browser-deps chaos

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

# pytest exits 5 when it collected nothing: that must fail, and it does (non-zero).
test: $(STAMP) lint browser-deps
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
# (exit 1). Tables and plots go to docs/chaos/.
CHAOS_MINUTES ?= 15
CHAOS_SEED ?= 7
chaos: $(STAMP)
	$(BIN)/pip install --quiet -e '.[chaos]'
	$(BIN)/python -m tests.chaos.run --profile long --minutes $(CHAOS_MINUTES) \
		--seed $(CHAOS_SEED) --out docs/chaos
	@for p in control control-acks control-publish control-sweeper; do \
		$(BIN)/python -m tests.chaos.run --profile $$p --seed $(CHAOS_SEED) --out docs/chaos; \
		echo "$$p: exit $$? (1 = violations found)"; \
	done
	@$(BIN)/python -c "import json,sys; sys.exit(json.load(open('docs/chaos/chaos-control.json'))['violations'] == 0)"

# The model-based test of the engine (tests/model) with its long profile: thousands of
# fresh random examples, longer ones, instead of make test's fixed hundred.
.PHONY: model-long
model-long: $(STAMP)
	SAGAFLOW_MODEL_PROFILE=long $(BIN)/pytest tests/model/test_engine_model.py -p no:cacheprovider

clean:
	rm -rf $(VENV) demo.sqlite3 .pytest_cache
