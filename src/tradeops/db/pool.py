"""The application's connection pool: asyncpg connections, opened on first use.

Requests, jobs and commands take connections from here; SQLAlchemy only builds statements
(db/prepared.py) and runs migrations. Measured on this project, checking a connection out of
SQLAlchemy's async pool and back (through greenlets) cost about as much Python time as two
of the request's statements: GET /orders/{id} used ~1.55 ms of the server's CPU through it
and ~1.35 ms through asyncpg's pool (bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, cast

import asyncpg

from tradeops.db.prepared import sent_alone
from tradeops.db.uow import Wakeup, fetch_limited
from tradeops.db.urls import libpq_url
from tradeops.db.wakeups import Wakeups, sending_on
from tradeops.settings import Settings


class PoolTimeout(TimeoutError):
    """No connection became free within the pool timeout: nothing was done, retry later (jobs
    retry a TimeoutError on their own)."""


_NO_CONNECTION = "no database connection became free in time"
_POOL_CLOSED = "the pool closed"


# jsonb's binary form is a version byte (1) before the JSON text.
_JSONB_VERSION = b"\x01"


def _jsonb_in(document: str) -> bytes:
    return _JSONB_VERSION + document.encode()


def _jsonb_out(data: bytes) -> Any:
    return json.loads(data[1:])


async def _set_codecs(connection: asyncpg.Connection) -> None:
    """json/jsonb as JSON text: parameters are JSON documents we rendered, results parsed.
    In the binary protocol, which asyncpg needs to decode a composite value holding one (a
    row of orders_as_shown, migration 0019): a text codec cannot be used inside a record."""
    await connection.set_type_codec(
        "json", schema="pg_catalog", encoder=str.encode, decoder=json.loads, format="binary"
    )
    await connection.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_jsonb_in, decoder=_jsonb_out, format="binary"
    )


# SQLSTATE class 42: an undefined function, table, column or type, among others.
_UNDEFINED_OBJECT_CLASS = "42"


async def _prepare_sent_alone(connection: asyncpg.Connection) -> None:
    """A new connection's codecs, then the statements sent alone (db.prepared.sent_alone)
    prepared once in a transaction, so that asyncpg's look-up of their types reaches one
    server connection behind a transaction pooler. Their types stay known to the connection;
    asyncpg closes these statements themselves later (its cache prepares its own).

    A database that lacks what they name (not migrated yet: readiness says so) still gives
    a connection; the look-up then happens at first use, as it did before."""
    await _set_codecs(connection)
    try:
        async with connection.transaction():
            for prepared in sent_alone():
                await connection.prepare(prepared.sql)
    except asyncpg.PostgresError as error:
        if not str(error.sqlstate).startswith(_UNDEFINED_OBJECT_CLASS):
            raise


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Run when a connection goes back: asyncpg has already rolled back an open transaction.

    Its default reset (RESET ALL, UNLISTEN, CLOSE ALL, unlock advisory locks) is a round trip
    per request that we do not need: everything a request sets is transaction-local
    (set_config(..., true)), and nothing we run takes session-level locks or listens."""


async def _give_back(pool: asyncpg.Pool, connection: Any) -> None:
    """Return a connection to the pool, without a task of its own when it comes back idle.

    asyncpg's Pool.release runs the return in a task (asyncio.shield) so that a cancelled
    caller still gives its connection back: a task and a turn of the event loop per request,
    about 6 µs of CPU (bench/README.md). An idle connection has nothing to wait for: asyncpg
    finds no transaction to roll back and our reset (_keep_session) does nothing, so the
    return runs to its end at once and no cancellation can cut it short. Any other goes
    asyncpg's way: a transaction left open (rolled back there), a query being cancelled, a
    connection closed, or one asyncpg means to close (used up, of an older generation).
    The attributes read are asyncpg's own (0.32, pinned by uv.lock); the pool's tests
    (tests/integration/test_pool_release.py) fail if they change."""
    con = connection._con  # the proxy's connection; None once it went back
    holder = connection._holder
    idle = (
        con is not None
        and not con.is_closed()
        and not con._protocol.is_in_transaction()
        and con._top_xact is None
        and not con._protocol._is_cancelling()
        and con._protocol.queries_count < holder._max_queries
        and holder._generation == holder._pool._generation
    )
    if not idle:
        await pool.release(connection)
        return
    con._on_release()  # what Pool.release does before its shield
    await holder.release(holder._timeout)


@dataclass(slots=True)
class _Alone:
    """A statement sent alone, waiting for a runner (Database.fetch_alone)."""

    sql: str
    arguments: Sequence[Any]
    limit_s: float | None  # the driver's limit on the statement, in seconds
    deadline: float  # the event loop's time by which it must have a connection
    answer: asyncio.Future[asyncpg.Record | None]

    def fail(self, error: BaseException) -> None:
        """`error` its answer, unless it has one (its request was cancelled, say)."""
        if not self.answer.done():
            self.answer.set_exception(error)


async def _answer(driver: asyncpg.Connection, call: _Alone) -> None:
    """`call`'s statement on `driver`, its row its answer, unless its request was cancelled
    (while it waited for a connection, say) or it waited past its deadline (PoolTimeout, as
    acquire's). An error in the statement is raised, as the connection may have gone with
    it; the caller answers it and gives the connection back."""
    if call.answer.done():
        return
    if asyncio.get_running_loop().time() > call.deadline:
        call.fail(PoolTimeout(_NO_CONNECTION))
        return
    record = await fetch_limited(driver, call.sql, call.arguments, call.limit_s)
    if not call.answer.done():
        call.answer.set_result(record)


class Database:
    """A pool on one server (or a multi-host URL's chosen one).

    `read_only`: a read replica's pool (TRADEOPS_READ_DATABASE_URL). Its transactions begin
    READ ONLY (db/uow.py), so a read path that tried to write fails on any server, a primary
    behind a `prefer-standby` URL included; its sessions carry their own application_name,
    telling the two pools apart in pg_stat_activity."""

    def __init__(
        self,
        settings: Settings,
        database_url: str,
        *,
        application_name: str = "tradeops",
        read_only: bool = False,
    ) -> None:
        self._url = libpq_url(database_url)
        self._settings = settings
        self.application_name = application_name
        self.read_only = read_only
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        # Made with the pool, on the event loop that uses it.
        self._turns: asyncio.Semaphore | None = None
        self._waiting = 0  # callers of acquire without a connection yet
        # The notifications of committed transactions, sent in batches off their requests.
        self.wakeups = Wakeups(sending_on(self))
        # Statements sent alone, in the order they came, and the tasks that run them (made
        # on first use, on the event loop that uses them).
        self._alone: asyncio.Queue[_Alone] | None = None
        self._runners: list[asyncio.Task[None]] = []

    async def _open(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is None:
                settings = self._settings
                self._turns = asyncio.Semaphore(settings.pool_size + settings.pool_max_overflow)
                self._pool = await asyncpg.create_pool(
                    self._url,
                    # Connections open as they are needed, up to pool_size + overflow, and
                    # close after five idle minutes: a one-shot command opens one.
                    min_size=0,
                    max_size=settings.pool_size + settings.pool_max_overflow,
                    max_inactive_connection_lifetime=300,
                    # Without prepared statements one_statement runs in a transaction,
                    # where asyncpg's type look-ups reach one server connection anyway.
                    init=_prepare_sent_alone if settings.db_prepared_statements else _set_codecs,
                    reset=_keep_session,
                    # A named statement lives on one server connection, which a pooler in
                    # transaction mode hands to another client after each transaction.
                    # Without the cache asyncpg describes each statement unnamed, then sends
                    # it again with its values: a second round trip per statement.
                    statement_cache_size=100 if settings.db_prepared_statements else 0,
                    # The one startup parameter: PgBouncer keeps it per client. The
                    # timeouts are set per transaction (db.uow.begin_statement).
                    server_settings={"application_name": self.application_name},
                )
            return self._pool

    @asynccontextmanager
    async def acquire(self, deadline: float | None = None) -> AsyncIterator[asyncpg.Connection]:
        """A connection, waited for until `deadline` (the event loop's time; by default the
        pool timeout from now), else PoolTimeout."""
        pool = self._pool or await self._open()
        turns = cast(asyncio.Semaphore, self._turns)
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self._settings.pool_timeout_seconds
        self._waiting += 1
        try:
            async with asyncio.timeout_at(deadline):
                # First come, first served: asyncpg's own wait is a queue that a newcomer
                # can overtake a woken waiter in (who then goes to the back), so under load
                # a few requests waited many times the usual wait. The semaphore hands each
                # free connection to the longest waiter; the pool then has one for it.
                await turns.acquire()
                try:
                    # No timeout of asyncpg's own: it would wrap the wait in a task of its
                    # own, a turn of the event loop per request; this one bounds a
                    # connection being opened too.
                    connection = await pool.acquire()
                except BaseException:
                    turns.release()
                    raise
        except TimeoutError as error:
            raise PoolTimeout(_NO_CONNECTION) from error
        finally:
            self._waiting -= 1
        try:
            # A proxy that refuses use after release; it has the connection's methods.
            yield cast(asyncpg.Connection, connection)
        finally:
            try:
                await _give_back(pool, connection)
            finally:
                turns.release()

    def connections(self) -> tuple[int, int]:
        """(in use, idle), for the pool gauge."""
        if self._pool is None:
            return 0, 0
        idle = self._pool.get_idle_size()
        return self._pool.get_size() - idle, idle

    @property
    def settings(self) -> Settings:
        return self._settings

    async def after_commit(self, wakeups: list[Wakeup]) -> None:
        """Send them with the next batch (db/wakeups.py): this returns at once."""
        self.wakeups.after_commit(wakeups)

    async def fetch_alone(
        self, sql: str, arguments: Sequence[Any], limit_s: float | None
    ) -> asyncpg.Record | None:
        """The row of a statement sent alone (db.uow.one_statement), run by one of the pool's
        runners: a task per connection that sends the next statement waiting as soon as the
        one before has its answer, in the order they came, on the same connection while
        nobody else waits for one.

        A request that took a connection for its own statement gave it back a turn of the
        event loop after the answer came in, and the next request sent its statement a turn
        after that: under load each turn is long, and make bench's POST /orders left a
        fifth of the machine's 2 cores idle, its connections mostly waiting for us
        (docs/benchmarks.md). The wait for a connection is bounded as acquire's, from the
        moment the statement came; a request cancelled before its statement is sent takes it
        back, one cancelled after leaves it to run to its end."""
        loop = asyncio.get_running_loop()
        if self._alone is None:
            self._alone = asyncio.Queue()
            size = self._settings.pool_size + self._settings.pool_max_overflow
            # Each in a context of its own: not the first caller's (its request id, say).
            self._runners = [
                asyncio.create_task(self._run_alone(self._alone), context=contextvars.Context())
                for _ in range(size)
            ]
        deadline = loop.time() + self._settings.pool_timeout_seconds
        answer: asyncio.Future[asyncpg.Record | None] = loop.create_future()
        self._alone.put_nowait(_Alone(sql, arguments, limit_s, deadline, answer))
        return await answer

    async def _run_alone(self, alone: asyncio.Queue[_Alone]) -> None:
        while True:
            call = await alone.get()
            if call.answer.done():  # its request was cancelled while it waited
                continue
            try:
                async with self.acquire(call.deadline) as driver:
                    while True:
                        await _answer(driver, call)
                        # The next statement waiting goes out on this connection, in this
                        # turn, without giving it back and taking it again: a new order cost
                        # our process a seventh less CPU (docs/benchmarks.md). Not when
                        # anyone waits for a connection of their own (a transaction, another
                        # runner): theirs is the next one that comes free.
                        if alone.empty() or self._waiting:
                            break
                        call = alone.get_nowait()
            except asyncio.CancelledError:  # the pool is closing (dispose)
                call.fail(PoolTimeout(_POOL_CLOSED))
                raise
            except Exception as error:  # no connection in time, or this statement failed
                call.fail(error)

    async def dispose(self) -> None:
        for runner in self._runners:
            runner.cancel()
        for runner in self._runners:
            with suppress(asyncio.CancelledError):
                await runner
        while self._alone is not None and not self._alone.empty():
            self._alone.get_nowait().fail(PoolTimeout(_POOL_CLOSED))
        self._alone, self._runners = None, []
        await self.wakeups.drain()  # handed over before the pool closes: sent on it
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
