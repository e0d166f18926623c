"""Wake-ups sent after their transaction has committed, in batches, off the request path.

PostgreSQL serializes the commits of transactions that NOTIFY: each holds one database-wide
lock from just before its commit record until the record is flushed, so concurrent writers
that notify commit one flush at a time. A statement that sets `tradeops.wake_after_commit`
sends no NOTIFY at its transaction's commit (migration 0027 gates the triggers): new orders'
intake does, in one statement (POST /orders, 0027) or for its own statement in a
transaction (0028). Once the commit is known, its caller hands the same notifications to
the pool's `Wakeups` (`Database.after_commit`; in a transaction, through
`UnitOfWork.wake_after_commit`), which sends them with `tradeops_wake`: one statement per
batch, whose own commit waits for no flush. While one batch is on its way the next
gathers, so under load many orders share a statement, and an idle server sends each at
once.

A wake-up is a hint to look again, never the news itself: every listener also looks on a
timer (an event stream at each heartbeat, procrastinate's worker every few seconds). So a
wake-up lost between the commit and its batch (the process killed, the database away for
a moment) costs its listeners that delay, never a change.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog

from tradeops.db.prepared import query
from tradeops.db.uow import ConnectionSource, Wakeup, one_statement

log = structlog.get_logger(component="tradeops.db.wakeups")

Send = Callable[[list[str], list[str]], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Sent:
    sent: int


# In a transaction of its own (migration 0027): pg_notify for each (channel, payload).
WAKE = query("SELECT tradeops_wake(:channels, :payloads) AS sent", Sent, alone=True)


def sending_on(db: ConnectionSource) -> Send:
    """Send a batch on `db` (the primary: a replica cannot notify)."""

    async def send(channels: list[str], payloads: list[str]) -> None:
        await one_statement(db, WAKE, {"channels": channels, "payloads": payloads})

    return send


class Wakeups:
    """The notifications this process still has to send, and the task sending them."""

    def __init__(self, send: Send) -> None:
        self._send = send
        # In the order handed over, each once: NOTIFY folds repeats in a transaction too.
        self._waiting: dict[Wakeup, None] = {}
        self._sender: asyncio.Task[None] | None = None

    def after_commit(self, wakeups: Iterable[Wakeup]) -> None:
        """Send `wakeups`, whose transaction has committed, with the next batch."""
        self._waiting.update(dict.fromkeys(wakeups))
        if self._sender is None or self._sender.done():
            # A context of its own: a batch is no one request's (its log lines carry none's id).
            self._sender = asyncio.create_task(
                self._send_waiting(), name="wakeups", context=contextvars.Context()
            )

    async def _send_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = list(self._waiting), {}
            try:
                await self._send([channel for channel, _ in batch], [p for _, p in batch])
            except Exception:  # whatever failed, the listeners' own timers find the changes
                log.warning("wake-ups not sent", wakeups=len(batch), exc_info=True)

    async def drain(self) -> None:
        """Wait until every notification handed over has been sent (as the process stops)."""
        while self._sender is not None and not self._sender.done():
            await asyncio.shield(self._sender)
