# tradeops — everything a fresh machine with Python >= 3.11 and make needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/.venv

.PHONY: help run test faults lint format bench deps clean chromium

help:
	@echo "make run    - embedded PostgreSQL, migrations, demo data, server on :8000"
	@echo "make test   - the whole suite on real PostgreSQL (TRADEOPS_TEST_DATABASE_URL or embedded)"
	@echo "make faults - crash PostgreSQL and the worker under load, fuzz the OpenAPI (own cluster)"
	@echo "make lint   - ruff check, ruff format --check, mypy --strict"
	@echo "make bench  - load benchmarks against a bare asyncpg app (results in bench/results)"

# uv itself, in a private tool venv when the machine has none.
$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet uv

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen
	@touch $@

deps: .venv/.synced

run: deps
	$(UV) run --frozen tradeops dev

test: deps chromium
	$(UV) run --frozen pytest $(PYTEST_ARGS)

# The fault suite (tests/faults): its own PostgreSQL cluster (initdb and pg_ctl from
# TRADEOPS_PG_BIN, default the newest /usr/lib/postgresql/N/bin) on a free port, killed and restarted
# under load, then schemathesis over the whole OpenAPI. Figures: .tradeops/faults/latest.json.
faults: deps
	$(UV) run --frozen pytest tests/faults -m faults -s -p no:cacheprovider $(PYTEST_ARGS)

# The browser tests (tests/e2e) drive Debian's chromium; Playwright never downloads a browser.
CHROMIUM := /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium for the browser tests (apt-get install chromium)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "$(CHROMIUM) is missing: the browser tests in tests/e2e will fail."; \
	    echo "Install it with: sudo apt-get install chromium"; \
	  fi; \
	fi

lint: deps
	$(UV) run --frozen ruff check src tests bench
	$(UV) run --frozen ruff format --check src tests bench
	$(UV) run --frozen mypy src

format: deps
	$(UV) run --frozen ruff check --fix src tests bench
	$(UV) run --frozen ruff format src tests bench

bench: deps
	$(UV) run --frozen python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache
