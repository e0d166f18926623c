"""The unit of work: one connection, one transaction, the request context set first.

Services receive a UnitOfWork and never commit; whoever opened it (an HTTP request, a CLI
command, a job) commits when the whole command succeeded, or rolls everything back.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import asyncpg
from sqlalchemy import Executable, text
from sqlalchemy.engine import CursorResult, Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tradeops.auth.principal import Principal
from tradeops.db.prepared import Prepared

T = TypeVar("T")

APP_ROLE = "tradeops_app"
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock

# One round trip: switch to the unprivileged role (so row-level security applies even when
# we log in as a superuser) and publish who is acting. All transaction-local (is_local=true),
# so nothing leaks to the next user of a pooled connection, PgBouncer included.
_SET_CONTEXT = text(
    "SELECT set_config('role', :role, true),"
    " set_config('tradeops.user_id', :user_id, true),"
    " set_config('tradeops.role', :principal_role, true),"
    " set_config('tradeops.desk_ids', :desk_ids, true),"
    " set_config('tradeops.all_desks', :all_desks, true),"
    " set_config('tradeops.api_key_id', :api_key_id, true),"
    " set_config('tradeops.request_id', :request_id, true)"
)


def context_parameters(principal: Principal, request_id: str | None) -> dict[str, str]:
    return {
        "role": APP_ROLE,
        "user_id": str(principal.user_id),
        "principal_role": principal.role.value,
        "desk_ids": "{" + ",".join(str(d) for d in sorted(principal.desk_ids)) + "}",
        "all_desks": "on" if principal.all_desks else "off",
        "api_key_id": "" if principal.api_key_id is None else str(principal.api_key_id),
        "request_id": request_id or "",
    }


class UnitOfWork:
    """A transaction in progress, with the principal it acts for."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection
        self.principal: Principal | None = None
        self.request_id: str | None = None
        self._driver: asyncpg.Connection | None = None

    async def fetchrow(
        self, statement: Prepared, params: Mapping[str, Any]
    ) -> asyncpg.Record | None:
        """Run a prepared hot-path statement on the driver, inside this same transaction."""
        driver = await self._driver_connection()
        return await driver.fetchrow(statement.sql, *statement.arguments(params))

    async def _driver_connection(self) -> asyncpg.Connection:
        if self._driver is None:
            fairy = await self.connection.get_raw_connection()
            # The context statement, always first, began the transaction through SQLAlchemy;
            # a statement sent before it would run outside both the transaction and the context.
            if self.principal is None or getattr(fairy.dbapi_connection, "_transaction", 1) is None:
                raise RuntimeError("set the request context before running statements")
            self._driver = cast(asyncpg.Connection, fairy.driver_connection)
        return self._driver

    async def set_context(self, principal: Principal, request_id: str | None = None) -> None:
        await self.connection.execute(_SET_CONTEXT, context_parameters(principal, request_id))
        self.principal = principal
        self.request_id = request_id

    async def execute(
        self,
        statement: Executable,
        parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> CursorResult[Any]:
        return await self.connection.execute(statement, parameters)

    async def one_or_none(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> Row[Any] | None:
        return (await self.connection.execute(statement, parameters)).one_or_none()

    async def scalar(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        return await self.connection.scalar(statement, parameters)


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, DBAPIError) and sqlstate_of(error) in RETRYABLE_SQLSTATES


def sqlstate_of(error: DBAPIError) -> str | None:
    original = error.orig
    code = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    cause = getattr(original, "__cause__", None)
    if code is None and cause is not None:
        code = getattr(cause, "sqlstate", None)
    return code if isinstance(code, str) else None


def backoff_seconds(attempt: int) -> float:
    """Jittered exponential backoff, so retried transactions do not collide again in step."""
    return float(min(0.5, 0.01 * 2**attempt) * (0.5 + random.random()))  # noqa: S311


@asynccontextmanager
async def unit_of_work(
    engine: AsyncEngine, principal: Principal, request_id: str | None = None
) -> AsyncIterator[UnitOfWork]:
    """Open a transaction with the context set; commit on success, roll back on any error."""
    async with engine.connect() as connection, connection.begin():
        uow = UnitOfWork(connection)
        await uow.set_context(principal, request_id)
        yield uow


async def run_in_transaction(
    engine: AsyncEngine,
    principal: Principal,
    command: Callable[[UnitOfWork], Awaitable[T]],
    *,
    attempts: int = 3,
    request_id: str | None = None,
) -> T:
    """Run `command` in its own transaction, retrying serialization failures and deadlocks."""
    for attempt in range(attempts):
        try:
            async with unit_of_work(engine, principal, request_id) as uow:
                return await command(uow)
        except DBAPIError as error:
            if not is_retryable(error) or attempt == attempts - 1:
                raise
            await asyncio.sleep(backoff_seconds(attempt))
    raise AssertionError("unreachable")
