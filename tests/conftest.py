"""Test database: a fresh database per session on real PostgreSQL, migrated by Alembic.

TRADEOPS_TEST_DATABASE_URL points at an existing server (a new database is created on it
and dropped afterwards); without it an embedded PostgreSQL is started under .tradeops/.
Each test starts from empty tables (TRUNCATE), so tests may commit, run concurrent
transactions and still never see each other's data.
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
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.factories import Cast, make_cast, make_reference_data
from tradeops.app import create_app
from tradeops.db import migrate
from tradeops.db.embedded import ensure_database, start_embedded
from tradeops.db.urls import asyncpg_url, with_database
from tradeops.settings import Settings

pytest_plugins = ["tests.live"]

ROOT = Path(__file__).resolve().parent.parent
DATA_TABLES = [
    "audit_events",
    "audit_checkpoints",
    "audit_stream_heads",
    "idempotency_keys",
    "sign_in_throttle",
    "positions",
    "executions",
    "order_events",
    "orders",
    "market_snapshots",
    "risk_limits",
    "clients",
    "instruments",
    "desk_members",
    "desks",
    "api_keys",
    "procrastinate_events",
    "procrastinate_periodic_defers",
    "procrastinate_jobs",
    "procrastinate_workers",
]


def server_url() -> str:
    configured = os.environ.get("TRADEOPS_TEST_DATABASE_URL")
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


def drop_database(server: str, url: str) -> None:
    name = url.rsplit("/", 1)[-1].split("?")[0]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    url = create_database(postgres_server_url)
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
    engine = create_async_engine(asyncpg_url(database_url), pool_size=5)
    yield engine
    await engine.dispose()


def _truncate(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # append-only triggers off
        conn.execute(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE")
        conn.execute("DELETE FROM users WHERE id <> 0")


@pytest.fixture(autouse=True)
def clean_tables(request: pytest.FixtureRequest) -> None:
    if "database_url" in request.fixturenames or "app" in request.fixturenames:
        _truncate(request.getfixturevalue("database_url"))


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def cast(app: FastAPI, owner_engine: AsyncEngine) -> Cast:
    """Reference data plus the usual people with credentials (see tests.factories.Cast)."""
    await make_reference_data(owner_engine)
    return await make_cast(owner_engine, app.state.tokens)


__all__ = ["create_database", "drop_database", "with_database"]
