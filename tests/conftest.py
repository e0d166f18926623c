"""Test database: a fresh database per session on real PostgreSQL, migrated by Alembic.

TRADEOPS_TEST_DATABASE_URL points at an existing server (a new database is created on it
and dropped afterwards); without it an embedded PostgreSQL is started under .tradeops/.
Each test starts from empty tables (see EMPTY_TABLES), so tests may commit, run concurrent
transactions and still never see each other's data.

In parallel (`pytest -n 2`, as `make test` runs it) the controller starts the embedded
server once and migrates one template database; each worker copies the template into a
database of its own (CREATE DATABASE ... TEMPLATE takes a fraction of Alembic's time).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import Cast, keyed_intake_in_a_transaction, make_cast, make_reference_data
from tests.owner import owner_engine_on
from tradeops.app import create_app
from tradeops.db import migrate
from tradeops.db.embedded import ensure_database, start_embedded
from tradeops.db.urls import with_database
from tradeops.settings import Settings

pytest_plugins = ["tests.live"]

ROOT = Path(__file__).resolve().parent.parent
# Before each test using the database: every table emptied but alembic_version and the system
# user, and the identity sequences the last test used restarted, as TRUNCATE ... RESTART
# IDENTITY would. DELETE, not TRUNCATE: emptying a handful of rows costs a few milliseconds,
# while TRUNCATE makes new files for twenty tables and their indexes (a second per test on
# a loaded server). Append-only triggers (and foreign keys) are off in replica mode.
EMPTY_TABLES = """
DO $$
DECLARE
  data_table regclass;
BEGIN
  SET LOCAL session_replication_role = replica;
  FOR data_table IN
    SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'
      AND relname NOT IN ('alembic_version', 'users')
  LOOP
    EXECUTE format('DELETE FROM %s', data_table);
  END LOOP;
  DELETE FROM users WHERE id <> 0;
  PERFORM setval(s.seqrelid, s.seqstart, false)
    FROM pg_sequence s
    JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
      AND d.deptype IN ('a', 'i')
    JOIN pg_sequences used
      ON format('%I.%I', used.schemaname, used.sequencename)::regclass = s.seqrelid
    WHERE d.refobjid <> 'users'::regclass AND used.last_value IS NOT NULL;
END
$$
"""


# Set by the xdist controller for its workers (inherited through the environment).
SERVER_ENV = "TRADEOPS_TEST_DATABASE_URL"
TEMPLATE_ENV = "TRADEOPS_TEST_TEMPLATE"
_template: list[tuple[str, str]] = []  # (server URL, template URL) made by this process


def server_url() -> str:
    configured = os.environ.get(SERVER_ENV)
    if configured:
        return configured
    server = start_embedded(ROOT / ".tradeops" / "test-pgdata")
    return str(server.get_uri())


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    return server_url()


def create_database(server: str, prefix: str = "tradeops_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    return ensure_database(server, name)


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[-1].split("?")[0]


def drop_database(server: str, url: str) -> None:
    name = database_name(url)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def copy_database(server: str, template: str, prefix: str = "tradeops_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')  # names are ours
    return with_database(server, name)


def commit_without_waiting(server: str, url: str) -> None:
    """Commits in this test database return before their WAL reaches the disk: a crash could
    lose the last few, which a test database can afford, and every commit (a dozen to arrange
    a test) stops waiting for an fsync on a server that other work keeps busy."""
    name = database_name(url)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')


def _runs_workers(config: pytest.Config) -> bool:
    """Whether this process is the controller of xdist workers (`-n 2`)."""
    if os.environ.get("PYTEST_XDIST_WORKER") or config.option.collectonly:
        return False
    return getattr(config.option, "dist", "no") != "no"


def pytest_configure(config: pytest.Config) -> None:
    """Before the workers start: one server and one migrated template for all of them."""
    if not _runs_workers(config):
        return
    server = server_url()  # the embedded one stays up until this process exits
    os.environ[SERVER_ENV] = server
    template = create_database(server, prefix="tradeops_template")
    commit_without_waiting(server, template)
    migrate.upgrade(template)
    _template.append((server, template))
    os.environ[TEMPLATE_ENV] = database_name(template)


def pytest_unconfigure(config: pytest.Config) -> None:
    for server, template in _template:
        drop_database(server, template)


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    template = os.environ.get(TEMPLATE_ENV)
    if template:
        url = copy_database(postgres_server_url, template)
        commit_without_waiting(postgres_server_url, url)
    else:
        url = create_database(postgres_server_url)
        commit_without_waiting(postgres_server_url, url)
        migrate.upgrade(url)
    yield url
    drop_database(postgres_server_url, url)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(
        env="test", log_format="json", access_log=False, maintenance=False, _env_file=None
    )  # type: ignore[call-arg]


@pytest.fixture(scope="session")
async def app(settings: Settings, database_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(settings, database_url)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def owner_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """The migration owner's connection: for arranging data and inspecting it as-is."""
    engine = owner_engine_on(database_url, pool_size=5)
    yield engine
    await engine.dispose()


class TableCleaner:
    """Empties the tables through one owner's connection kept open for the session (a new
    connection per test costs more than the emptying), opened again if a test broke it."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.conn: psycopg.Connection | None = None

    def empty(self) -> None:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.database_url, autocommit=True)
        try:
            self.conn.execute(EMPTY_TABLES)
        except psycopg.OperationalError:  # its backend was ended: once more on a new one
            self.conn.close()
            self.conn = None
            self.empty()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@pytest.fixture(scope="session")
def table_cleaner(database_url: str) -> Iterator[TableCleaner]:
    cleaner = TableCleaner(database_url)
    yield cleaner
    cleaner.close()


@pytest.fixture(autouse=True)
def clean_tables(request: pytest.FixtureRequest) -> None:
    if "database_url" in request.fixturenames or "app" in request.fixturenames:
        request.getfixturevalue("table_cleaner").empty()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def one_connection_app(
    settings: Settings, database_url: str
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app whose pool holds one connection, with a short statement timeout."""
    narrow = settings.model_copy(
        update={"pool_size": 1, "pool_max_overflow": 0, "statement_timeout_ms": 300}
    )
    app = create_app(narrow, database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield app, http


@pytest.fixture
async def cast(app: FastAPI, owner_engine: AsyncEngine) -> Cast:
    """Reference data plus the usual people with credentials (see tests.factories.Cast)."""
    await make_reference_data(owner_engine)
    return await make_cast(owner_engine, app.state.tokens)


__all__ = ["create_database", "drop_database", "with_database"]


@pytest.fixture(params=["in one statement", "in a transaction"])
def keyed_intake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A test of POST /orders with an Idempotency-Key, run both ways: in one statement
    (migration 0038) and in the transaction it replaced (the way the one statement declines)."""
    if request.param == "in a transaction":
        keyed_intake_in_a_transaction(monkeypatch)
    return str(request.param)
