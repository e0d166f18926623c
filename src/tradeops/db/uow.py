"""The unit of work: one connection, one transaction, the request context set first.

Services receive a UnitOfWork and never commit; whoever opened it (an HTTP request, a CLI
command, a job) commits when the whole command succeeded, or rolls everything back.

SQLAlchemy builds the statements (db/prepared.py); they run on an asyncpg connection from
our pool (db/pool.py), in a transaction held at the driver. Measured on this project, that
halves the cost of a simple request compared with executing through SQLAlchemy's async
adapter, and skipping SQLAlchemy's pool saves another ~15% (bench/README.md).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Set
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar, cast

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import ClauseElement

from tradeops.db.pool import Database
from tradeops.db.prepared import Prepared, Query, prepare

T = TypeVar("T")

APP_ROLE = "tradeops_app"
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock

# One round trip: switch to the unprivileged role (so row-level security applies even when
# we log in as a superuser) and publish who is acting. All transaction-local (is_local=true),
# so nothing leaks to the next user of a pooled connection, PgBouncer included.
SET_CONTEXT = prepare(
    "SELECT set_config('role', :role, true),"
    " set_config('tradeops.user_id', :user_id, true),"
    " set_config('tradeops.role', :principal_role, true),"
    " set_config('tradeops.desk_ids', :desk_ids, true),"
    " set_config('tradeops.all_desks', :all_desks, true),"
    " set_config('tradeops.api_key_id', :api_key_id, true),"
    " set_config('tradeops.request_id', :request_id, true)"
)

Statement = Prepared | ClauseElement | str


class Identity(Protocol):
    """Who a transaction acts for, as far as the request context needs to know.

    `auth.principal.Principal` is the one implementation. The database layer names only what
    it publishes with set_config, so it never imports auth (a layer above it)."""

    @property
    def user_id(self) -> int: ...
    @property
    def role(self) -> str: ...  # a StrEnum: its value is what policies compare
    @property
    def desk_ids(self) -> Set[int]: ...
    @property
    def all_desks(self) -> bool: ...
    @property
    def api_key_id(self) -> int | None: ...


def context_parameters(principal: Identity, request_id: str | None) -> dict[str, str]:
    return {
        "role": APP_ROLE,
        "user_id": str(principal.user_id),
        "principal_role": str(principal.role),
        "desk_ids": "{" + ",".join(str(d) for d in sorted(principal.desk_ids)) + "}",
        "all_desks": "on" if principal.all_desks else "off",
        "api_key_id": "" if principal.api_key_id is None else str(principal.api_key_id),
        "request_id": request_id or "",
    }


class Row:
    """A result row: attributes by column name, `_mapping` for a dict, iteration by position."""

    __slots__ = ("_record",)

    def __init__(self, record: asyncpg.Record) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        try:
            return self._record[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, index: int) -> Any:
        return self._record[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._record.values())

    @property
    def _mapping(self) -> dict[str, Any]:
        return dict(self._record.items())


class Result:
    def __init__(self, records: list[asyncpg.Record]) -> None:
        self._rows = [Row(r) for r in records]

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows)

    @property
    def rowcount(self) -> int:
        """Rows returned: write `RETURNING` to count changed rows."""
        return len(self._rows)

    def all(self) -> list[Row]:
        return self._rows

    def one(self) -> Row:
        if len(self._rows) != 1:
            raise LookupError(f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def one_or_none(self) -> Row | None:
        if len(self._rows) > 1:
            raise LookupError(f"expected at most one row, got {len(self._rows)}")
        return self._rows[0] if self._rows else None

    def scalars(self) -> list[Any]:
        return [row[0] for row in self._rows]


class UnitOfWork:
    """A transaction in progress, with the principal it acts for."""

    def __init__(self, driver: asyncpg.Connection) -> None:
        self.driver = driver
        self.principal: Identity | None = None
        self.request_id: str | None = None

    async def set_context(self, principal: Identity, request_id: str | None = None) -> None:
        await self.fetchrow(SET_CONTEXT, context_parameters(principal, request_id))
        self.principal = principal
        self.request_id = request_id

    async def fetchrow(
        self, statement: Statement, params: Mapping[str, Any] | None = None
    ) -> asyncpg.Record | None:
        sql, arguments = _render(statement, params)
        return await self.driver.fetchrow(sql, *arguments)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A nested transaction (a savepoint): leaving it by an error undoes only its work, so
        one command of many (a bulk cancel's) may fail and the others still commit. Written
        out, as the transaction itself is (asyncpg's transaction() refuses to nest in a
        transaction it did not begin)."""
        await self.driver.execute("SAVEPOINT tradeops_step")
        try:
            yield
        except BaseException:
            if not self.driver.is_closed():
                await self.driver.execute("ROLLBACK TO SAVEPOINT tradeops_step")
            raise
        await self.driver.execute("RELEASE SAVEPOINT tradeops_step")

    async def execute(
        self,
        statement: Statement,
        params: Mapping[str, Any] | list[Mapping[str, Any]] | None = None,
    ) -> Result:
        if isinstance(params, list):  # executemany: one statement per parameter set
            for each in params:
                await self.execute(statement, each)
            return Result([])
        sql, arguments = _render(statement, params)
        return Result(await self.driver.fetch(sql, *arguments))

    async def row(self, query: Query[T], params: Mapping[str, Any] | None = None) -> T | None:
        """The one row of a typed query, as its type, or None."""
        record = await self.fetchrow(query.prepared, params)
        return None if record is None else query.into(**record)

    async def rows(self, query: Query[T], params: Mapping[str, Any] | None = None) -> list[T]:
        """Every row of a typed query, as its type."""
        return await self.rows_of(query.prepared, query.into, params)

    async def row_of(
        self, statement: Statement, into: type[T], params: Mapping[str, Any] | None = None
    ) -> T | None:
        """The one row of a statement built per call, as `into`, or None."""
        record = await self.fetchrow(statement, params)
        return None if record is None else into(**record)

    async def rows_of(
        self, statement: Statement, into: type[T], params: Mapping[str, Any] | None = None
    ) -> list[T]:
        """Every row of a statement built per call (filters), as `into`."""
        sql, arguments = _render(statement, params)
        return [into(**record) for record in await self.driver.fetch(sql, *arguments)]

    async def one_or_none(
        self, statement: Statement, params: Mapping[str, Any] | None = None
    ) -> Row | None:
        record = await self.fetchrow(statement, params)
        return None if record is None else Row(record)

    async def scalar(self, statement: Statement, params: Mapping[str, Any] | None = None) -> Any:
        record = await self.fetchrow(statement, params)
        return None if record is None else record[0]

    async def stream_rows(
        self, query: Query[T], params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[T]:
        """The rows of a typed query as they arrive (a server-side cursor), as its type."""
        sql, arguments = _render(query.prepared, params)
        async for record in self.driver.cursor(sql, *arguments, prefetch=500):
            yield query.into(**record)

    async def stream(
        self, statement: Statement, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[Row]:
        """Rows as they arrive (a server-side cursor), for reading a whole table."""
        sql, arguments = _render(statement, params)
        async for record in self.driver.cursor(sql, *arguments, prefetch=500):
            yield Row(record)


def _render(statement: Statement, params: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    prepared = statement if isinstance(statement, Prepared) else prepare(statement)
    return prepared.sql, prepared.arguments(params or {})


async def driver_of(connection: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under a pooled SQLAlchemy connection."""
    fairy = await connection.get_raw_connection()
    return cast(asyncpg.Connection, fairy.driver_connection)


def is_retryable(error: BaseException) -> bool:
    return sqlstate_of(error) in RETRYABLE_SQLSTATES


def sqlstate_of(error: BaseException) -> str | None:
    """The SQLSTATE of an asyncpg error, or of one SQLAlchemy wrapped."""
    candidates: list[object] = [error]
    if isinstance(error, DBAPIError):
        candidates += [error.orig, getattr(error.orig, "__cause__", None)]
    for candidate in candidates:
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def backoff_seconds(attempt: int) -> float:
    """Jittered exponential backoff, so retried transactions do not collide again in step."""
    return float(min(0.5, 0.01 * 2**attempt) * (0.5 + random.random()))  # noqa: S311


# Where connections come from: the application's pool, or a SQLAlchemy engine (tests arrange
# data through the migration owner's).
Connections = Database | AsyncEngine

# A transaction left open by a crashed or stuck caller must not hold its locks for long.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000


def begin_statement(statement_timeout_ms: int, *, read_only: bool = False) -> str:
    """BEGIN and the transaction's time limits, in one round trip (one simple query).

    The limits are transaction-local (set_config(..., true)), so every transaction carries
    its own: a pooler in transaction mode (PgBouncer) refuses them as startup parameters
    (`unsupported startup parameter`) or, told to ignore them, drops them silently; and
    nothing set here outlives the transaction on a server connection others share."""
    begin = "BEGIN READ ONLY" if read_only else "BEGIN"
    return (
        f"{begin}; SELECT"
        f" set_config('statement_timeout', '{int(statement_timeout_ms)}', true),"
        " set_config('idle_in_transaction_session_timeout',"
        f" '{IDLE_IN_TRANSACTION_TIMEOUT_MS}', true)"
    )


@asynccontextmanager
async def _connection(source: Connections) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    """A connection, and the statement that begins a transaction on it."""
    if isinstance(source, Database):
        async with source.acquire() as driver:
            yield (
                driver,
                begin_statement(source.settings.statement_timeout_ms, read_only=source.read_only),
            )
    else:  # the migration owner's engine, in tests: no limits, as for migrations
        async with source.connect() as connection:
            yield await driver_of(connection), "BEGIN"


@asynccontextmanager
async def transaction(source: Connections) -> AsyncIterator[UnitOfWork]:
    """A pooled connection in a transaction: committed on success, rolled back on any error.

    Begun, committed and rolled back by hand rather than with asyncpg's `transaction()`,
    whose BEGIN cannot carry the time limits in the same round trip."""
    async with _connection(source) as (driver, begin):
        await driver.execute(begin)
        try:
            yield UnitOfWork(driver)
        except BaseException:
            # A connection already lost has nothing to roll back (the server ended the
            # transaction): the error that lost it is the one to report.
            if not driver.is_closed():
                await driver.execute("ROLLBACK")
            raise
        await driver.execute("COMMIT")


@asynccontextmanager
async def unit_of_work(
    db: Connections, principal: Identity, request_id: str | None = None
) -> AsyncIterator[UnitOfWork]:
    """A transaction with the principal's context set as its first statement."""
    async with transaction(db) as uow:
        await uow.set_context(principal, request_id)
        yield uow


async def in_transaction(
    db: Connections, command: Callable[[UnitOfWork], Awaitable[T]], *, attempts: int = 3
) -> T:
    """Run `command` in a fresh transaction, again on a new one after a serialization failure
    or deadlock (at most `attempts` times), committing only when it returns."""
    for attempt in range(attempts):
        try:
            async with transaction(db) as uow:
                return await command(uow)
        except asyncpg.PostgresError as error:
            if not is_retryable(error) or attempt == attempts - 1:
                raise
            await asyncio.sleep(backoff_seconds(attempt))
    raise AssertionError("unreachable")


async def run_in_transaction(
    db: Connections,
    principal: Identity,
    command: Callable[[UnitOfWork], Awaitable[T]],
    *,
    attempts: int = 3,
    request_id: str | None = None,
) -> T:
    """`in_transaction` for a principal: the context is the transaction's first statement."""

    async def with_context(uow: UnitOfWork) -> T:
        await uow.set_context(principal, request_id)
        return await command(uow)

    return await in_transaction(db, with_context, attempts=attempts)


async def record_despite_failure(
    db: Connections,
    record: Callable[[UnitOfWork], Awaitable[T]],
    *,
    principal: Identity | None = None,
    request_id: str | None = None,
    attempts: int = 3,
) -> T:
    """Commit `record` although the command it belongs to failed: the one way to keep a write
    that the failure must not undo (a failed sign-in counted for throttling, a failed MCP tool
    call audited). Nothing else commits on a failure: a raised error rolls back, always.

    It is a transaction of its own on another pooled connection, run after the command's
    (which rolls back as usual), so it holds only what the failure means, never the command's
    half-done changes. With `principal` the context is its first statement; without (nobody
    is signed in yet) it runs as the login role, keeping the request id for the audit trail.
    Its own errors propagate: the caller decides whether a record that could not be written
    changes the answer (throttling: yes) or is only logged (the failed call's audit: no)."""
    if principal is not None:
        return await run_in_transaction(
            db, principal, record, attempts=attempts, request_id=request_id
        )

    async def anonymous(uow: UnitOfWork) -> T:
        uow.request_id = request_id
        return await record(uow)

    return await in_transaction(db, anonymous, attempts=attempts)
