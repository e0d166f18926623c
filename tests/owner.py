"""The migration owner's engine, as the tests use it: SQLAlchemy's, for arranging data and
inspecting it as-is, and also a source of connections for the application's transactions
(`tradeops.db.uow.ConnectionSource`), so a test may run a service as the owner. The
application itself has one source, its pool (`tradeops.db.pool.Database`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tradeops.db.uow import Wakeup, fetch_limited
from tradeops.db.urls import asyncpg_url
from tradeops.db.wakeups import sending_on
from tradeops.settings import Settings


class OwnerEngine(AsyncEngine):
    """An engine whose transactions, run by `tradeops.db.uow.transaction`, have no time
    limits (statement_timeout 0), as the migrations' have none."""

    read_only = False
    settings = Settings.model_construct(statement_timeout_ms=0)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.connect() as connection:
            yield await driver_of(connection)

    async def fetch_alone(
        self, sql: str, arguments: Sequence[Any], limit_s: float | None
    ) -> asyncpg.Record | None:
        async with self.acquire() as driver:
            return await fetch_limited(driver, sql, arguments, limit_s)

    async def after_commit(self, wakeups: list[Wakeup]) -> None:
        """Sent at once, before the test goes on (the application batches them)."""
        await sending_on(self)([channel for channel, _ in wakeups], [p for _, p in wakeups])


def owner_engine_on(database_url: str, **options: Any) -> OwnerEngine:
    """The owner's engine on `database_url` (options as for create_async_engine)."""
    return OwnerEngine(create_async_engine(asyncpg_url(database_url), **options).sync_engine)


async def driver_of(connection: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under a pooled SQLAlchemy connection."""
    fairy = await connection.get_raw_connection()
    return cast(asyncpg.Connection, fairy.driver_connection)
