"""A connection goes back to the pool without a task of its own when it comes back idle.

asyncpg's Pool.release wraps every return in asyncio.shield(), so that a cancelled caller
still returns its connection: a task per request and a turn of the event loop, about 6 µs of
the server's CPU per acquire and release (bench/README.md). A connection that comes back
with no transaction open has nothing to wait for, so it goes back at once; any other still
goes asyncpg's shielded way, which rolls back what was left open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from contextlib import contextmanager
from typing import Any

import pytest

from tradeops.db.pool import Database
from tradeops.settings import Settings


@contextmanager
def tasks_made() -> Generator[list[str], None, None]:
    """The names of the coroutines the running loop makes tasks of, while in the block."""
    loop = asyncio.get_running_loop()
    made: list[str] = []
    before = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kw: Any):  # type: ignore[no-untyped-def]
        made.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kw)

    loop.set_task_factory(factory)
    try:
        yield made
    finally:
        loop.set_task_factory(before)


@pytest.fixture
async def one_connection(settings: Settings, database_url: str) -> Any:
    db = Database(
        settings.model_copy(update={"pool_size": 1, "pool_max_overflow": 0}), database_url
    )
    try:
        yield db
    finally:
        await db.dispose()


async def test_an_idle_connection_goes_back_without_a_task(one_connection: Database) -> None:
    db = one_connection
    async with db.acquire() as connection:  # opened, then back in the pool
        first = await connection.fetchval("SELECT pg_backend_pid()")
    with tasks_made() as made:
        async with db.acquire() as connection:
            second = await connection.fetchval("SELECT pg_backend_pid()")
    assert made == []
    assert second == first  # the one connection came back to the pool, ready
    assert db.connections() == (0, 1)


async def test_a_connection_left_in_a_transaction_is_rolled_back_as_it_goes_back(
    one_connection: Database,
) -> None:
    db = one_connection
    async with db.acquire() as connection:
        await connection.execute("BEGIN")
        await connection.execute("SELECT set_config('tradeops.left_open', 'yes', true)")
    async with db.acquire() as connection:
        assert await connection.fetchval("SELECT pg_current_xact_id_if_assigned()") is None
        status = await connection.fetchval("SELECT current_setting('tradeops.left_open', true)")
        in_transaction = connection.is_in_transaction()
    assert status in (None, "")  # transaction-local: gone with the rollback
    assert not in_transaction


async def test_a_request_cancelled_in_its_transaction_gives_its_connection_back(
    one_connection: Database,
) -> None:
    """Cancelled while PostgreSQL works: the connection is rolled back and back in the pool."""
    db = one_connection
    started = asyncio.Event()

    async def request() -> None:
        async with db.acquire() as connection:
            await connection.execute("BEGIN")
            started.set()
            await connection.execute("SELECT pg_sleep(30)")

    task = asyncio.create_task(request())
    await started.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(10):
        async with db.acquire() as connection:
            assert not connection.is_in_transaction()
            assert await connection.fetchval("SELECT 1") == 1
