# tradeops — everything a fresh machine with Python >= 3.11 and make needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/.venv
# Installing is chatter a newcomer need not read: it goes here, and is shown only on failure.
SETUP_LOG := $(or $(TRADEOPS_HOME),.tradeops)/logs/setup.log

.PHONY: help run test faults lint format bench bench-data bench-orders deps clean reset chromium pgbouncer pgbouncer-new

# Every target documents itself with a `## what it does` after its prerequisites; `make help`
# lists them all, so a new target shows up without touching this one
# (tests/unit/test_makefile.py checks none is missing).
help: ## this list
	@awk 'BEGIN { FS = ":[^#]*## " } /^[a-zA-Z][a-zA-Z0-9_-]*:[^=].*## / { printf "make %-10s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

# uv itself, in a private tool venv when the machine has none.
$(CURDIR)/.tools/bin/uv:
	@mkdir -p $(dir $(SETUP_LOG))
	@echo "installing uv into .tools/ (log: $(SETUP_LOG))"
	@{ $(PYTHON) -m venv $(CURDIR)/.tools && $(CURDIR)/.tools/bin/pip install --quiet uv; } \
	  >>$(SETUP_LOG) 2>&1 || { tail -n 20 $(SETUP_LOG); exit 1; }

# Bytecode is compiled once here (and for src/ before the tests), not left to each process:
# where PYTHONDONTWRITEBYTECODE is set nothing is ever cached, and every `tradeops` command
# and test worker compiles FastAPI, SQLAlchemy and the app from source again (seconds of CPU).
.venv/.synced: pyproject.toml uv.lock | $(UV)
	@mkdir -p $(dir $(SETUP_LOG))
	@echo "installing dependencies into .venv/ (log: $(SETUP_LOG))"
	@$(UV) sync --frozen --compile-bytecode >>$(SETUP_LOG) 2>&1 || { tail -n 20 $(SETUP_LOG); exit 1; }
	@touch $@

deps: .venv/.synced ## install Python and the dependencies into .venv (uv sync --frozen)

run: deps ## embedded PostgreSQL in .tradeops/, migrations, demo data, server on :8000
	@$(UV) run --frozen tradeops dev

# In TEST_WORKERS processes (pytest-xdist), each on a database of its own copied from one
# migrated template; TEST_WORKERS=0 runs in this process, as plain `pytest` does.
TEST_WORKERS ?= 2
test: deps chromium ## the whole suite on real PostgreSQL (TRADEOPS_TEST_DATABASE_URL or embedded)
	@$(UV) run --frozen python -m compileall -q src
	$(UV) run --frozen pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The fault suite (tests/faults): its own PostgreSQL cluster (initdb and pg_ctl from
# TRADEOPS_PG_BIN, default the newest /usr/lib/postgresql/N/bin) on a free port, killed and restarted
# under load, then schemathesis over the whole OpenAPI. Figures: .tradeops/faults/latest.json.
faults: deps pgbouncer pgbouncer-new ## crash PostgreSQL and the worker under load, fuzz the OpenAPI (own cluster)
	$(UV) run --frozen pytest tests/faults -m faults -s -p no:cacheprovider $(PYTEST_ARGS)

# The fault suite runs tradeops behind PgBouncer in transaction mode (test_behind_pgbouncer.py):
# Debian's package, started as a process of the test's own with its own ini (never the
# system service, which the package may also set up).
pgbouncer: ## install Debian's pgbouncer for the fault suite, when missing
	@if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing pgbouncer for the fault suite (apt-get install pgbouncer)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer; \
	  else \
	    echo "pgbouncer is missing: tests/faults/test_behind_pgbouncer.py will be skipped."; \
	    echo "Install it with: sudo apt-get install pgbouncer"; \
	  fi; \
	fi

# Its `1.21+` set-up (max_prepared_statements) needs PgBouncer >= 1.21, and Debian 12 ships 1.18:
# this builds Debian 13's (trixie's) source package, its security patches applied, against
# Debian 12's own libraries into .tools/pgbouncer-<version>/. Only a deb-src line for trixie is
# added, for the download, then removed: no trixie binary package is ever installed. 1.5 to 2.5
# minutes on a loaded 2-core machine (about 20 s of CPU), so `make faults` builds it; skipped
# once built (make clean removes it).
PGBOUNCER_SOURCE_SUITE ?= trixie
PGBOUNCER_SOURCES := /etc/apt/sources.list.d/tradeops-pgbouncer-source.sources
pgbouncer-new: ## build PgBouncer >= 1.21 from Debian trixie's source into .tools/, when missing
	@if ! compgen -G '$(CURDIR)/.tools/pgbouncer-*/bin/pgbouncer' >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    mkdir -p $(dir $(SETUP_LOG)); \
	    echo "building PgBouncer from Debian $(PGBOUNCER_SOURCE_SUITE)'s source into .tools/ (log: $(SETUP_LOG))"; \
	    src=$$(mktemp -d); \
	    { printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
	        $(PGBOUNCER_SOURCE_SUITE) >$(PGBOUNCER_SOURCES) \
	      && apt-get update -qq \
	      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential dpkg-dev pkgconf \
	           libevent-dev libssl-dev libc-ares-dev \
	      && (cd $$src && apt-get source -qq pgbouncer/$(PGBOUNCER_SOURCE_SUITE)); \
	      fetched=$$?; rm -f $(PGBOUNCER_SOURCES); [ $$fetched = 0 ] \
	      && cd $$src/pgbouncer-*/ && version=$${PWD##*/pgbouncer-} \
	      && ./configure --prefix=$(CURDIR)/.tools/pgbouncer-$$version --with-cares=yes \
	      && $(MAKE) -j$$(nproc) && $(MAKE) install; \
	    } >>$(SETUP_LOG) 2>&1 || { rm -rf $$src; tail -n 20 $(SETUP_LOG); exit 1; }; \
	    rm -rf $$src; \
	  else \
	    echo "PgBouncer >= 1.21 is missing: its set-up in test_behind_pgbouncer.py will be skipped."; \
	    echo "Build it as root with: make pgbouncer-new"; \
	  fi; \
	fi

# The browser tests (tests/e2e) drive Debian's chromium; Playwright never downloads a browser.
CHROMIUM := /usr/bin/chromium
chromium: ## install Debian's chromium for the browser tests, when missing
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium for the browser tests (apt-get install chromium)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "$(CHROMIUM) is missing: the browser tests in tests/e2e will fail."; \
	    echo "Install it with: sudo apt-get install chromium"; \
	  fi; \
	fi

lint: deps ## ruff check, ruff format --check, mypy --strict, lint-imports (the layers)
	$(UV) run --frozen ruff check src tests bench
	$(UV) run --frozen ruff format --check src tests bench
	$(UV) run --frozen mypy src
	$(UV) run --frozen lint-imports --no-logo

format: deps ## ruff check --fix, ruff format
	$(UV) run --frozen ruff check --fix src tests bench
	$(UV) run --frozen ruff format src tests bench

bench: deps ## load benchmarks: ours vs bare asyncpg, same-work and seed 000 peers (bench/results)
	$(UV) run --frozen --group bench python bench/run.py $(BENCH_ARGS)

# Orders for the list benchmark, COPY'd into TRADEOPS_DATABASE_URL (else the embedded
# server's tradeops_ten_million database); each run adds ROWS more. See bench/README.md.
ROWS ?= 1000000
bench-data: deps ## add ROWS generated orders (default 1000000) for make bench-orders
	$(UV) run --frozen python bench/data.py --rows $(ROWS)

bench-orders: deps ## GET /orders page 1, a deep page and every filter, p50/p99 (after bench-data)
	$(UV) run --frozen python bench/ten_million.py $(BENCH_ARGS)

# Where `make run` keeps the embedded PostgreSQL (TRADEOPS_HOME); reset removes only the
# servers' data directories in it, whatever TRADEOPS_HOME points at.
TRADEOPS_DIR := $(or $(TRADEOPS_HOME),.tradeops)

clean: ## remove .venv, .tools and caches; keeps .tradeops/ (make reset removes it)
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
	@echo "Kept $(TRADEOPS_DIR)/ (the embedded database, its demo data and logins)."
	@echo "To start from nothing: make reset (or rm -rf $(TRADEOPS_DIR)), then make run."

reset: ## delete .tradeops/: the embedded database, its demo data and logins (make run makes new ones)
	@for data in "$(TRADEOPS_DIR)/pgdata" "$(TRADEOPS_DIR)/test-pgdata"; do \
	  if [ -f "$$data/postmaster.pid" ] && kill -0 "$$(head -1 "$$data/postmaster.pid")" 2>/dev/null; then \
	    echo "The embedded PostgreSQL in $$data is running: stop make run (or the tests) first."; \
	    exit 1; \
	  fi; \
	done
	@echo "Removing $(TRADEOPS_DIR)/pgdata and $(TRADEOPS_DIR)/test-pgdata: orders, audit trail," \
	  "demo data and demo logins. The next make run creates them afresh and prints new logins."
	rm -rf "$(TRADEOPS_DIR)/pgdata" "$(TRADEOPS_DIR)/test-pgdata"
	@rmdir "$(TRADEOPS_DIR)" 2>/dev/null || true
