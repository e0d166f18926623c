"""The pool hands a connection that comes free to the request that has waited longest.

asyncpg's pool alone does not: a request that asks at the moment a connection comes back
takes it ahead of the waiter just woken for it, which goes to the back of the line. Under
load a few requests then waited many times the usual wait (make bench's GET at 32
connections on a pool of 4: p99 152 and 178 ms against a p50 of 10-12 ms; with the fair gate,
21 ms).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asyncpg.connection import Connection

from tradeops.db.pool import Database, PoolTimeout
from tradeops.settings import Settings


async def test_requests_queued_for_the_pool_are_served_in_the_order_they_came(
    settings: Settings, database_url: str
) -> None:
    """Twenty requests ask in turn for a pool of two, and each, when served, goes straight
    back for a second statement: their first statements are served in the order they asked."""
    db = Database(_of_size(settings, 2), database_url)
    served: list[tuple[int, int]] = []

    async def request(n: int) -> None:
        for statement in (1, 2):
            async with db.acquire() as connection:
                served.append((n, statement))
                await connection.fetchval("SELECT 1")

    try:
        await _opened(db, 2)
        requests = []
        for n in range(20):
            requests.append(asyncio.create_task(request(n)))
            await asyncio.sleep(0)  # each asks in turn, while earlier ones are served
        await asyncio.gather(*requests)
    finally:
        await db.dispose()
    # A request that asks again queues behind those already waiting, so no later request
    # overtakes an earlier one's first statement.
    firsts = [n for n, statement in served if statement == 1]
    assert firsts == list(range(20)), served


async def test_statements_sent_alone_are_sent_in_the_order_they_came(
    settings: Settings, database_url: str
) -> None:
    """Ten statements handed to a pool of one at once start on the server in that order."""
    db = Database(_of_size(settings, 1), database_url)
    try:
        await _opened(db, 1)
        numbered = "SELECT $1::int AS n, statement_timestamp() AS at"
        rows = await asyncio.gather(*(db.fetch_alone(numbered, [n], None) for n in range(10)))
    finally:
        await db.dispose()
    assert [row["n"] for row in sorted(rows, key=lambda row: row["at"])] == list(range(10))


async def test_a_connection_answered_sends_the_next_statement_in_the_same_turn(
    settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a statement waiting, the connection that answers one sends it in the same turn of
    the event loop that took the answer in: no turn with the connection idle in between
    (a request holding the connection itself gave it back a turn later, and the next one
    sent its statement a turn after that)."""
    db = Database(_of_size(settings, 1), database_url)
    loop = asyncio.get_running_loop()
    turns, seen = 0, {}

    def tick() -> None:  # counts the event loop's turns while the statements run
        nonlocal turns
        turns += 1
        if len(seen) < 4:
            loop.call_soon(tick)

    execute = Connection._execute

    async def noted(self: Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        label = next((label for label in ("first", "second") if label in query), None)
        if label:
            seen[f"{label} sent"] = turns
        result = await execute(self, query, *args, **kwargs)
        if label:
            seen[f"{label} answered"] = turns
        return result

    monkeypatch.setattr(Connection, "_execute", noted)
    try:
        await _opened(db, 1)
        loop.call_soon(tick)
        await asyncio.gather(
            db.fetch_alone("SELECT 'first'", [], None), db.fetch_alone("SELECT 'second'", [], None)
        )
    finally:
        await db.dispose()
    assert seen["second sent"] == seen["first answered"], seen
    assert seen["first answered"] > seen["first sent"], seen  # the turns were counted


async def test_statements_waiting_go_out_on_the_connection_that_answered_the_one_before(
    settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten statements handed to a pool of one at once take its connection once: each goes out
    on it as the one before is answered, not after giving it back and taking it again."""
    db = Database(_of_size(settings, 1), database_url)
    taken = 0
    acquire = Database.acquire

    def counted(self: Database, deadline: float | None = None) -> Any:
        nonlocal taken
        taken += 1
        return acquire(self, deadline)

    try:
        await _opened(db, 1)
        monkeypatch.setattr(Database, "acquire", counted)
        rows = await asyncio.gather(
            *(db.fetch_alone("SELECT $1::int", [n], None) for n in range(10))
        )
    finally:
        await db.dispose()
    assert [row[0] for row in rows] == list(range(10))
    assert taken == 1


async def test_a_transaction_waiting_takes_the_connection_before_the_statements_queued(
    settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While statements sent alone keep a pool of one busy, a request that asks for the
    connection for a transaction of its own has it as soon as the statement on it is
    answered, ahead of the nineteen still waiting: a runner keeps its connection for the
    next statement only while nobody else waits for one."""
    db = Database(_of_size(settings, 1), database_url)

    async def transaction(sent: list[str]) -> None:
        while not sent:  # the first statement is on the connection (for 50 ms)
            await asyncio.sleep(0)
        async with db.acquire():
            sent.append("transaction")

    try:
        await _opened(db, 1)
        sent = _statements_sent(monkeypatch)
        first = db.fetch_alone("SELECT pg_sleep(0.05)", [], None)
        queued = [db.fetch_alone(f"SELECT {n}", [], None) for n in range(1, 20)]
        await asyncio.gather(first, *queued, transaction(sent))
    finally:
        await db.dispose()
    assert sent[:3] == ["SELECT pg_sleep(0.05)", "transaction", "SELECT 1"], sent
    assert len(sent) == 21


async def test_a_statement_waits_for_a_connection_as_long_as_the_pool_timeout_and_no_more(
    settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a held connection a statement sent alone fails with PoolTimeout once the pool
    timeout has passed since it came; one whose request was cancelled while it waited is
    never sent."""
    db = Database(_of_size(settings, 1, timeout_s=0.2), database_url)
    sent = _statements_sent(monkeypatch)
    loop = asyncio.get_running_loop()
    try:
        async with db.acquire():
            came = loop.time()
            with pytest.raises(PoolTimeout):
                await db.fetch_alone("SELECT 'too late'", [], None)
            waited = loop.time() - came
            cancelled = asyncio.create_task(db.fetch_alone("SELECT 'cancelled'", [], None))
            await asyncio.sleep(0.05)
            cancelled.cancel()
        assert await db.fetch_alone("SELECT 'after'", [], None) is not None
    finally:
        await db.dispose()
    assert 0.2 <= waited < 0.4, waited
    assert sent == ["SELECT 'after'"]


async def test_a_statement_queued_past_the_pool_timeout_is_not_sent(
    settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a statement that runs longer than the pool timeout (0.2 s) on a pool of one,
    the statement queued after it fails with PoolTimeout when the connection comes free,
    rather than being sent late."""
    db = Database(_of_size(settings, 1, timeout_s=0.2), database_url)
    try:
        await _opened(db, 1)
        sent = _statements_sent(monkeypatch)
        slow = db.fetch_alone("SELECT pg_sleep(0.3)", [], None)
        late = db.fetch_alone("SELECT 'late'", [], None)
        answers = await asyncio.gather(slow, late, return_exceptions=True)
    finally:
        await db.dispose()
    assert isinstance(answers[1], PoolTimeout), answers
    assert sent == ["SELECT pg_sleep(0.3)"]


def _statements_sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements sent from now on, by any connection, in the order they were sent."""
    sent: list[str] = []
    execute = Connection._execute

    async def noted(self: Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(query)
        return await execute(self, query, *args, **kwargs)

    monkeypatch.setattr(Connection, "_execute", noted)
    return sent


def _of_size(settings: Settings, connections: int, timeout_s: float = 5) -> Settings:
    """A pool of exactly `connections`, whose waits end after `timeout_s`."""
    update = {"pool_size": connections, "pool_max_overflow": 0, "pool_timeout_seconds": timeout_s}
    return settings.model_copy(update=update)


async def _opened(db: Database, connections: int) -> None:
    """The pool's connections opened, so that being served is taking one, not opening it."""
    everyone_in = asyncio.Barrier(connections)

    async def hold() -> None:
        async with db.acquire():
            await everyone_in.wait()  # all held at once: each one was opened

    await asyncio.gather(*(hold() for _ in range(connections)))
