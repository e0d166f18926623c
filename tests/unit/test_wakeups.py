"""db.wakeups: how wake-ups handed over after commits are gathered into batches.

What they send is tested on PostgreSQL (tests/integration/test_wakeups_after_commit.py);
here the sender is a recorder, to hold the batching itself: one batch on its way at a time,
the next gathered meanwhile, in order, each wake-up once, and a failed batch not stopping
the next."""

from __future__ import annotations

import asyncio
import contextvars

from tradeops.db.wakeups import Wakeups


class Recorder:
    """A sender that records each batch and can be held until released."""

    def __init__(self, fail_first: bool = False) -> None:
        self.batches: list[list[tuple[str, str]]] = []
        self.release = asyncio.Event()
        self.release.set()
        self._fail = fail_first

    async def __call__(self, channels: list[str], payloads: list[str]) -> None:
        self.batches.append(list(zip(channels, payloads, strict=True)))
        await self.release.wait()
        if self._fail:
            self._fail = False
            raise ConnectionError("the database went away")


async def test_an_idle_process_sends_each_at_once() -> None:
    sender = Recorder()
    wakeups = Wakeups(sender)
    wakeups.after_commit([("a", "1")])
    await wakeups.drain()
    wakeups.after_commit([("b", "2"), ("c", "3")])
    await wakeups.drain()
    assert sender.batches == [[("a", "1")], [("b", "2"), ("c", "3")]]


async def test_wakeups_handed_over_while_a_batch_is_sent_go_together_next() -> None:
    sender = Recorder()
    sender.release.clear()
    wakeups = Wakeups(sender)
    wakeups.after_commit([("a", "1")])
    await asyncio.sleep(0)  # the first batch is on its way, held
    for n in range(2, 6):
        wakeups.after_commit([("a", str(n)), ("any", "x")])
    sender.release.set()
    await wakeups.drain()
    assert sender.batches == [
        [("a", "1")],
        [("a", "2"), ("any", "x"), ("a", "3"), ("a", "4"), ("a", "5")],  # "any" once
    ]


async def test_a_failed_batch_does_not_stop_the_next() -> None:
    sender = Recorder(fail_first=True)
    sender.release.clear()
    wakeups = Wakeups(sender)
    wakeups.after_commit([("a", "1")])
    await asyncio.sleep(0)
    wakeups.after_commit([("b", "2")])
    sender.release.set()
    await wakeups.drain()  # no error escapes: a lost wake-up is a delay, not a failure
    assert sender.batches == [[("a", "1")], [("b", "2")]]


async def test_a_batch_carries_no_requests_context() -> None:
    """The task sending a batch starts in a context of its own, not the request's that
    handed over its first wake-up (whose id would otherwise be on the batch's log lines)."""
    request_id = contextvars.ContextVar[str | None]("request_id", default=None)
    seen: list[str | None] = []

    async def send(channels: list[str], payloads: list[str]) -> None:
        seen.append(request_id.get())

    wakeups = Wakeups(send)
    request_id.set("req-1")
    wakeups.after_commit([("a", "1")])
    await wakeups.drain()
    assert seen == [None]
