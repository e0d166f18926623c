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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence, Set
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

from tradeops.db.prepared import Prepared, Query, prepare, query
from tradeops.settings import Settings

T = TypeVar("T")

APP_ROLE = "tradeops_app"
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock

# The request context, each key with the setting it is published as. Set in one column of
# one statement (`context_column`): switching to the unprivileged role (so row-level security
# applies even when we log in as a superuser) and publishing who is acting. All
# transaction-local (is_local=true), so nothing leaks to the next user of a pooled
# connection, PgBouncer included.
CONTEXT_SETTINGS = (
    ("role", "role"),
    ("user_id", "tradeops.user_id"),
    ("principal_role", "tradeops.role"),
    ("desk_ids", "tradeops.desk_ids"),
    ("all_desks", "tradeops.all_desks"),
    ("api_key_id", "tradeops.api_key_id"),
    ("request_id", "tradeops.request_id"),
)


def context_column(values: Mapping[str, str]) -> str:
    """A select-list column, `context`, that sets every context setting to the SQL expression
    `values` gives for its key: SET_CONTEXT's parameters, or what authentication computes
    in the same statement that finds the principal."""
    calls = ", ".join(
        f"set_config('{setting}', {values[key]}, true)" for key, setting in CONTEXT_SETTINGS
    )
    return f"concat({calls}) AS context"


@dataclass(frozen=True, slots=True)
class ContextSet:
    """The settings a context column set, concatenated: read by nobody, selected to run."""

    context: str


SET_CONTEXT = query(
    "SELECT " + context_column({key: f":{key}" for key, _ in CONTEXT_SETTINGS}), ContextSet
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


# A notification, (channel, payload) as pg_notify takes them: one a writer sends after its
# transaction has committed, rather than its triggers at the commit (db/wakeups.py).
Wakeup = tuple[str, str]


class UnitOfWork:
    """A transaction in progress, with the principal it acts for."""

    def __init__(self, driver: asyncpg.Connection) -> None:
        self.driver = driver
        self.principal: Identity | None = None
        self.request_id: str | None = None
        self.wakeups: list[Wakeup] = []

    def wake_after_commit(self, wakeups: Iterable[Wakeup]) -> None:
        """Notifications that this transaction's triggers left out (a statement that set
        `tradeops.wake_after_commit`, migration 0028): `transaction` hands them to its source
        once the transaction has committed, and drops them if it rolls back."""
        self.wakeups.extend(wakeups)

    async def set_context(self, principal: Identity, request_id: str | None = None) -> None:
        await self.row(SET_CONTEXT, context_parameters(principal, request_id))
        self.principal = principal
        self.request_id = request_id

    async def _fetchrow(
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
        woken = len(self.wakeups)
        try:
            yield
        except BaseException:
            del self.wakeups[woken:]  # what the undone work would have woken
            if not self.driver.is_closed():
                await self.driver.execute("ROLLBACK TO SAVEPOINT tradeops_step")
            raise
        await self.driver.execute("RELEASE SAVEPOINT tradeops_step")

    async def execute(
        self,
        statement: Statement,
        params: Mapping[str, Any] | list[Mapping[str, Any]] | None = None,
    ) -> None:
        """Run a statement for its effect; rows it returns are not read. A caller that needs
        an answer (a count, an id) runs a typed query with RETURNING instead."""
        if isinstance(params, list):  # executemany: one statement per parameter set
            for each in params:
                await self.execute(statement, each)
            return
        sql, arguments = _render(statement, params)
        await self.driver.execute(sql, *arguments)

    async def row(self, query: Query[T], params: Mapping[str, Any] | None = None) -> T | None:
        """The one row of a typed query, as its type, or None."""
        record = await self._fetchrow(query.prepared, params)
        return None if record is None else query.into(**record)

    async def rows(self, query: Query[T], params: Mapping[str, Any] | None = None) -> list[T]:
        """Every row of a typed query, as its type."""
        return await self.rows_of(query.prepared, query.into, params)

    async def row_of(
        self, statement: Statement, into: type[T], params: Mapping[str, Any] | None = None
    ) -> T | None:
        """The one row of a statement built per call, as `into`, or None."""
        record = await self._fetchrow(statement, params)
        return None if record is None else into(**record)

    async def rows_of(
        self, statement: Statement, into: type[T], params: Mapping[str, Any] | None = None
    ) -> list[T]:
        """Every row of a statement built per call (filters), as `into`."""
        sql, arguments = _render(statement, params)
        return [into(**record) for record in await self.driver.fetch(sql, *arguments)]

    async def stream_rows(
        self, query: Query[T], params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[T]:
        """The rows of a typed query as they arrive (a server-side cursor), as its type."""
        sql, arguments = _render(query.prepared, params)
        async for record in self.driver.cursor(sql, *arguments, prefetch=500):
            yield query.into(**record)


def _render(statement: Statement, params: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    prepared = statement if isinstance(statement, Prepared) else prepare(statement)
    return prepared.sql, prepared.arguments(params or {})


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


class ConnectionSource(Protocol):
    """Where transactions get their connection: the application's pool (`Database`) is the
    one in the application; the tests adapt the migration owner's engine to it."""

    read_only: bool  # its transactions begin READ ONLY (a read replica's pool)

    @property
    def settings(self) -> Settings: ...

    def acquire(self) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

    async def fetch_alone(
        self, sql: str, arguments: Sequence[Any], limit_s: float | None
    ) -> asyncpg.Record | None:
        """The row of one statement sent alone on one of its connections (autocommit), as
        fetch_limited answers it."""

    async def after_commit(self, wakeups: list[Wakeup]) -> None:
        """Send the notifications of a transaction that has committed (never raises: the
        transaction is committed whatever happens to them)."""


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
async def transaction(source: ConnectionSource) -> AsyncIterator[UnitOfWork]:
    """A pooled connection in a transaction: committed on success, rolled back on any error.

    Begun, committed and rolled back by hand rather than with asyncpg's `transaction()`,
    whose BEGIN cannot carry the time limits in the same round trip."""
    async with source.acquire() as driver:
        settings = source.settings
        await driver.execute(
            begin_statement(settings.statement_timeout_ms, read_only=source.read_only)
        )
        uow = UnitOfWork(driver)
        try:
            yield uow
        except BaseException:
            # A connection already lost has nothing to roll back (the server ended the
            # transaction): the error that lost it is the one to report.
            if not driver.is_closed():
                await driver.execute("ROLLBACK")
            raise
        await driver.execute("COMMIT")
    if uow.wakeups:
        await source.after_commit(uow.wakeups)


async def one_statement(
    source: ConnectionSource,
    query: Query[T],
    params: Mapping[str, Any],
    *,
    timeout_ms: int | None = None,
) -> T | None:
    """The one row of a typed query sent alone, as a transaction of its own (autocommit): one
    round trip. For a statement that sets its own context (migration 0019's reads), which
    then dies with it, on a pooled or PgBouncer'd connection alike. With no BEGIN to carry
    the statement timeout, the driver enforces it: past it, asyncpg cancels the query on the
    server, answered as the server's own timeout would be (a 504). `timeout_ms` overrides
    the limit: a write that bounds its own waits in the server gives the driver a backstop.
    The query is declared `alone` (db.prepared.query): each connection prepares it at
    connect, in a transaction, and a first use here costs no type look-up of asyncpg's
    outside one.

    Without prepared statements (TRADEOPS_DB_PREPARED_STATEMENTS=false, a pooler that
    cannot keep them), asyncpg prepares each statement in a round trip of its own, which a
    pooler in transaction mode may send to another server connection than the execution:
    there the statement runs in a transaction, as every other request does."""
    if not query.alone:
        raise ValueError("a query sent alone is declared so: query(..., alone=True)")
    if not source.settings.db_prepared_statements:
        async with transaction(source) as uow:
            return await uow.row(query, params)
    sql, arguments = _render(query.prepared, params)
    limit_ms = source.settings.statement_timeout_ms if timeout_ms is None else timeout_ms
    limit_s = limit_ms / 1000 if limit_ms else None  # 0: no limit, as for the server
    record = await source.fetch_alone(sql, arguments, limit_s)
    return None if record is None else query.into(**record)


async def one_write(
    source: ConnectionSource, query: Query[T], params: Mapping[str, Any]
) -> T | None:
    """A write sent alone (one_statement) by a function that bounds its own waits for locks:
    it is given the statement timeout as :lock_timeout_ms, past which the server ends the
    statement with nothing written. The driver's limit is only a backstop, twice as long:
    past it the statement may have committed just before it was cancelled, so the caller
    could not be told "nothing was written" from the timeout alone."""
    limit_ms = source.settings.statement_timeout_ms
    writes = {**params, "lock_timeout_ms": limit_ms}
    return await one_statement(source, query, writes, timeout_ms=2 * limit_ms)


async def fetch_limited(
    driver: asyncpg.Connection, sql: str, arguments: Sequence[Any], limit_s: float | None
) -> asyncpg.Record | None:
    """The row of `sql` sent alone on `driver`, which past `limit_s` seconds cancels it on
    the server: answered as the server's own statement timeout would be (a 504)."""
    try:
        return await driver.fetchrow(sql, *arguments, timeout=limit_s)
    except TimeoutError as error:
        canceled = "canceling statement due to statement timeout"
        raise asyncpg.QueryCanceledError(canceled) from error


@asynccontextmanager
async def unit_of_work(
    db: ConnectionSource, principal: Identity, request_id: str | None = None
) -> AsyncIterator[UnitOfWork]:
    """A transaction with the principal's context set as its first statement."""
    async with transaction(db) as uow:
        await uow.set_context(principal, request_id)
        yield uow


async def in_transaction(
    db: ConnectionSource, command: Callable[[UnitOfWork], Awaitable[T]], *, attempts: int = 3
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
    db: ConnectionSource,
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
    db: ConnectionSource,
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
