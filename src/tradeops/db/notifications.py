"""One LISTEN connection per process, fanned out to whoever waits in it.

PostgreSQL delivers a NOTIFY at its transaction's commit, to every session that LISTENs on
the channel. Each process listens once, on a connection of its own (not from the pool: a
pooled connection is shared by requests, and asyncpg's pool resets listeners), and hands
each notification to the subscriptions whose filter takes it. A subscriber only learns
"look again": it re-reads what changed with its own short transaction, so a notification
that is lost (the connection dropped) is repaired by looking again, never by trusting the
payload. On a lost connection the listener connects again (1 s, then up to 10 s apart) and
wakes every subscriber, since anything may have happened in between.

Started on first use: a process that never streams holds no extra connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import asyncpg
import structlog

from tradeops.db.urls import libpq_url

log = structlog.get_logger(component="tradeops.db.notifications")

Notice = dict[str, Any]
Accepts = Callable[[Notice], bool]


class Subscription:
    """Set when a notification it accepts arrives (or the listener reconnected)."""

    __slots__ = ("accepts", "woken")

    def __init__(self, accepts: Accepts) -> None:
        self.accepts = accepts
        self.woken = asyncio.Event()

    async def wait(self, seconds: float) -> bool:
        """True if woken within `seconds`; the wake is consumed."""
        try:
            async with asyncio.timeout(seconds):
                await self.woken.wait()
        except TimeoutError:
            return False
        self.woken.clear()
        return True


class Listener:
    def __init__(self, database_url: str, channel: str) -> None:
        self._url = libpq_url(database_url)
        self._channel = channel
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    @contextmanager
    def subscribe(self, accepts: Accepts) -> Iterator[Subscription]:
        """A subscription for the `with` block; starts listening if not yet."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name=f"listen-{self._channel}")
        subscription = Subscription(accepts)
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)

    def _deliver(self, payload: str) -> None:
        try:
            notice = json.loads(payload)
        except ValueError:
            return
        for subscription in tuple(self._subscriptions):
            if subscription.accepts(notice):
                subscription.woken.set()

    def _wake_all(self) -> None:
        for subscription in tuple(self._subscriptions):
            subscription.woken.set()

    async def _listen(self) -> None:
        delay = 1.0
        while True:
            try:
                connection = await asyncpg.connect(
                    self._url, server_settings={"application_name": "tradeops-listen"}
                )
            except Exception as error:  # whatever the reason, the listener must live on
                log.warning("cannot listen for notifications", error=repr(error), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)
                continue
            delay = 1.0
            try:
                await self._listen_on(connection)
            except Exception as error:  # a connection lost mid-LISTEN fails in many ways
                log.warning("listening failed", error=repr(error))
            finally:
                self.listening.clear()
                connection.terminate()  # no goodbye on a connection that may be gone
            await asyncio.sleep(delay)

    async def _listen_on(self, connection: asyncpg.Connection) -> None:
        """Deliver notifications until the connection is lost."""
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _: lost.set())
        await connection.add_listener(
            self._channel, lambda _c, _pid, _channel, payload: self._deliver(payload)
        )
        self.listening.set()
        self._wake_all()  # whatever happened while not listening: look again
        await lost.wait()
        log.warning("lost the notification connection; listening again")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
