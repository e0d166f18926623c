"""The suite's own isolation: what one test wrote is gone before the next one starts.

Tables are emptied with DELETE (not TRUNCATE, which costs a second per test on a loaded
server), so this checks that the result is still what TRUNCATE ... RESTART IDENTITY gave.
"""

from __future__ import annotations

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import TableCleaner
from tests.factories import SEED_ORDER, Cast, make_reference_data

TABLES = (
    "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
    " AND relkind = 'r' AND relname <> 'alembic_version'"
)


async def test_every_table_is_emptied_and_identities_start_again(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, table_cleaner: TableCleaner
) -> None:
    created = await client.post("/api/v1/orders", json=SEED_ORDER, headers=cast["trader"])
    assert created.status_code == 201, created.text

    table_cleaner.empty()

    async with owner_engine.connect() as conn:
        tables = list((await conn.execute(text(TABLES))).scalars())
        assert {"orders", "audit_events", "desks", "users"} <= set(tables)
        for table in tables:
            left = await conn.scalar(text(f"SELECT count(*) FROM {table}"))  # names from pg_class
            assert left == (1 if table == "users" else 0), f"{table} kept {left} rows"
        assert await conn.scalar(text("SELECT id FROM users")) == 0, "only the system user"
    await make_reference_data(owner_engine)
    async with owner_engine.connect() as conn:
        assert await conn.scalar(text("SELECT min(id) FROM desks")) == 1, "identity restarted"
        assert await conn.scalar(text("SELECT min(id) FROM audit_events")) == 1


async def test_a_cleaner_whose_connection_was_ended_connects_again(
    owner_engine: AsyncEngine, table_cleaner: TableCleaner
) -> None:
    table_cleaner.empty()
    assert table_cleaner.conn is not None
    pid = table_cleaner.conn.info.backend_pid
    async with owner_engine.connect() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    table_cleaner.empty()
    assert table_cleaner.conn.info.backend_pid != pid


async def test_the_test_database_commits_without_waiting_for_the_disk(
    owner_engine: AsyncEngine,
) -> None:
    async with owner_engine.connect() as conn:
        assert await conn.scalar(text("SHOW synchronous_commit")) == "off"
