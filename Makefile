# tradeops — everything a fresh machine with Python >= 3.11 and make needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/.venv

.PHONY: help run test lint format bench deps clean

help:
	@echo "make run    - embedded PostgreSQL, migrations, demo data, server on :8000"
	@echo "make test   - the whole suite on real PostgreSQL (TRADEOPS_TEST_DATABASE_URL or embedded)"
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

test: deps
	$(UV) run --frozen pytest $(PYTEST_ARGS)

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
