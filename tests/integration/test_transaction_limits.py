"""What a pooler in transaction mode (PgBouncer) needs of our connections, on plain PostgreSQL.

Nothing is set when a connection opens (PgBouncer < 1.21 refuses a statement_timeout startup
parameter, later ones drop it): every transaction sets its own time limits in its BEGIN.
With TRADEOPS_DB_PREPARED_STATEMENTS=false no statement is ever named, by asyncpg (requests,
jobs) or psycopg (procrastinate, migrations). The worker LISTENs on a URL of its own.
tests/faults/test_behind_pgbouncer.py runs all this through a real PgBouncer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import psycopg
import pytest

from tradeops.auth.principal import SYSTEM
from tradeops.db.pool import Database
from tradeops.db.uow import (
    UnitOfWork,
    in_transaction,
    record_despite_failure,
    transaction,
    unit_of_work,
)
from tradeops.jobs.app import connector_for, run_worker
from tradeops.settings import Settings

LIMITS = "SELECT current_setting('statement_timeout') AS statement_timeout,"
LIMITS += " current_setting('idle_in_transaction_session_timeout') AS idle_timeout"
NAMED_STATEMENTS = "SELECT count(*) FROM pg_prepared_statements"


@pytest.fixture
async def db(settings: Settings, database_url: str) -> AsyncIterator[Database]:
    """A pool of one connection, so that a test reads the session its statements ran on."""
    one = settings.model_copy(
        update={"statement_timeout_ms": 1234, "pool_size": 1, "pool_max_overflow": 0}
    )
    database = Database(one, database_url)
    yield database
    await database.dispose()


@dataclass(frozen=True, slots=True)
class Limits:
    statement_timeout: str
    idle_timeout: str


@dataclass(frozen=True, slots=True)
class Answer:
    value: int


async def limits(uow: UnitOfWork) -> tuple[str, str]:
    row = await uow.row_of(LIMITS, Limits)
    assert row is not None
    return row.statement_timeout, row.idle_timeout


async def test_every_transaction_sets_its_time_limits_and_the_connection_none(
    db: Database,
) -> None:
    async with transaction(db) as uow:
        assert await limits(uow) == ("1234ms", "1min")
    async with unit_of_work(db, SYSTEM, "limits-test") as uow:
        assert await limits(uow) == ("1234ms", "1min")
    assert await in_transaction(db, limits) == ("1234ms", "1min")
    assert await record_despite_failure(db, limits) == ("1234ms", "1min")
    async with db.acquire() as connection:  # outside a transaction: the server's defaults
        outside = await connection.fetchrow(LIMITS)
        assert outside is not None and tuple(outside) == ("0", "0")
        assert await connection.fetchval("SELECT current_setting('application_name')") == (
            "tradeops"
        )


async def test_a_statement_past_the_timeout_is_cancelled(db: Database) -> None:
    started = time.monotonic()
    with pytest.raises(asyncpg.QueryCanceledError):
        async with transaction(db) as uow:
            await uow.execute("SELECT pg_sleep(5)")
    assert 1.2 <= time.monotonic() - started < 4
    async with transaction(db) as uow:  # the connection is fine for the next transaction
        assert await uow.row_of("SELECT 1 AS value", Answer) == Answer(1)


async def named_statements_after_repeats(db: Database) -> int:
    for _ in range(3):
        async with transaction(db) as uow:
            await uow.row_of(
                "SELECT count(*) AS value FROM orders WHERE id = :id", Answer, {"id": 1}
            )
    async with db.acquire() as connection:
        return int(await connection.fetchval(NAMED_STATEMENTS))


async def test_without_prepared_statements_asyncpg_names_none(
    settings: Settings, database_url: str
) -> None:
    one = {"pool_size": 1, "pool_max_overflow": 0}
    for prepared, expect_named in ((True, True), (False, False)):
        db = Database(
            settings.model_copy(update={**one, "db_prepared_statements": prepared}), database_url
        )
        try:
            named = await named_statements_after_repeats(db)
        finally:
            await db.dispose()
        assert (named > 0) is expect_named, (prepared, named)


async def test_without_prepared_statements_the_job_connector_prepares_none(
    settings: Settings, database_url: str
) -> None:
    for prepared, expect_named in ((True, True), (False, False)):
        connector = connector_for(
            database_url, settings.model_copy(update={"db_prepared_statements": prepared})
        )
        await connector.open_async()
        try:
            async with connector.pool.connection() as connection:
                for _ in range(6):  # psycopg prepares on the fifth run by default
                    await connection.execute("SELECT 1 WHERE %s = 1", (1,))
                row = await (await connection.execute(NAMED_STATEMENTS)).fetchone()
        finally:
            await connector.close_async()
        assert row is not None and (row[0] > 0) is expect_named, (prepared, row)


async def listeners(database_url: str, application_name: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND query ILIKE 'LISTEN%%'",
            (application_name,),
        )
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def test_the_worker_listens_on_its_listen_url(settings: Settings, database_url: str) -> None:
    """Told apart by application_name: behind PgBouncer this URL is the direct one."""
    # The server's URL may already carry a query (an embedded server's socket directory).
    joined = "&" if "?" in database_url else "?"
    listen_url = f"{database_url}{joined}application_name=tradeops-listener"
    chosen = settings.model_copy(update={"worker_listen_database_url": listen_url})
    worker = asyncio.create_task(
        run_worker(database_url, install_signal_handlers=False, settings=chosen)
    )
    try:
        deadline = time.monotonic() + 30
        while not await listeners(database_url, "tradeops-listener"):
            assert time.monotonic() < deadline, "no LISTEN on the listen URL"
            await asyncio.sleep(0.1)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
