"""Order events as they happen: the event stream and waiting for an order to change.

Every insert into order_events is announced at its commit (a trigger's NOTIFY, migration
0015) with ids only. A stream never trusts the announcement: it re-reads the events after its
position through the same row-level-security-checked query as any read, so it sends exactly
what GET shows the caller. A notification is only a hint to look again now; the stream also
looks again at every heartbeat, so a notification lost with a dropped connection costs a
heartbeat's delay, never an event.

Gap-free order. Event ids come from an identity, handed out when the event is inserted,
not when it commits: transaction A may take id 7 and commit after transaction B took and
committed id 8. A reader that sent 8 and then resumed "after 8" would never send 7. So the
stream reads events in (transaction_id, id) order and sends only events whose transaction is
older than the oldest transaction still in flight that may write to this database (the
`settled` column; pg_snapshot_xmin of the reading statement's snapshot, or, when that holds
an event back, order_events_horizon() of migration 0015, which leaves out transactions of
other databases on the same server): every such transaction before that point has ended, so
no event can ever appear before a position the stream has passed. Resuming after an event
(Last-Event-ID) continues from that event's position: nothing lost, nothing sent twice.

The price: an event is held back while an older writing transaction on this database is
still open, however unrelated, and sent as soon as it ends (the stream looks again every
50 ms, backing off to 1 s, while it holds events back). Our own transactions are short (the
pool ends an idle one after 60 s); the measured delay is in docs/api.md.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass

import orjson
import structlog

from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.db.notifications import Listener, Notice
from tradeops.db.pool import Database
from tradeops.db.transient import is_transient
from tradeops.db.uow import UnitOfWork, Wakeup, in_transaction
from tradeops.errors import DomainError, InvalidRequest, TooManyRequests
from tradeops.orders import repository as repo
from tradeops.orders.repository import StreamedEvent

log = structlog.get_logger(component="tradeops.orders.stream")

CHANNEL = "tradeops_order_events"  # the trigger's channel (migration 0015)
BATCH = 200
HELD_BACK_FIRST_LOOK = 0.05
HELD_BACK_LAST_LOOK = 1.0

Identify = Callable[[UnitOfWork], Awaitable[Principal]]


class TooManyStreams(TooManyRequests):
    slug = "too-many-streams"
    title = "Too many open event streams"


@dataclass(frozen=True, slots=True)
class Position:
    """Where a stream is: after this event, in (transaction_id, id) order."""

    transaction_id: int
    event_id: int


def event_wakeup(order_id: int, desk_id: int) -> Wakeup:
    """The wake-up of an event whose writer sends it after the commit (db/wakeups.py), for
    the listeners of order_events_notify's channel: what they read of its notification."""
    return CHANNEL, orjson.dumps({"order_id": order_id, "desk_id": desk_id}).decode()


def on_desks(principal: Principal) -> Callable[[Notice], bool]:
    """A notification worth looking again for: an event on one of the principal's desks."""
    return lambda notice: principal.all_desks or notice.get("desk_id") in principal.desk_ids


async def start_position(
    uow: UnitOfWork, principal: Principal, last_event_id: int | None
) -> Position:
    """After the event the client saw last; without one, from now (the oldest transaction
    in flight: events that committed just before may come too)."""
    authorize(principal, Action.READ_ORDERS)
    if last_event_id is None:
        horizon = await uow.row(repo.STREAM_HORIZON)
        assert horizon is not None  # a SELECT of a function: always one row
        return Position(horizon.transaction_id, 0)
    if last_event_id == 0:
        return Position(0, 0)  # from the first event
    seen = await uow.row(
        repo.EVENT_POSITION,
        {
            "id": last_event_id,
            "all_desks": principal.all_desks,
            "desk_ids": list(principal.desk_ids),
        },
    )
    if seen is None:
        raise InvalidRequest(
            f"Last-Event-ID {last_event_id} is not an order event you can see: resume with "
            "the id of the last event this stream sent you, 0 for all, or none for new ones.",
            field="header.Last-Event-ID",
        )
    return Position(seen.transaction_id, last_event_id)


async def events_after(
    uow: UnitOfWork, principal: Principal, position: Position, limit: int = BATCH
) -> list[StreamedEvent]:
    """The events after `position`, each marked settled or not. The server-wide horizon
    first (cheap); if it holds an event back, the exact one (only this database's
    transactions count), so a long transaction elsewhere on the server holds nothing up."""
    params = {
        "after_transaction": position.transaction_id,
        "after_id": position.event_id,
        "all_desks": principal.all_desks,
        "desk_ids": list(principal.desk_ids),
        "limit": limit,
        "exact": False,
    }
    events = await uow.rows(repo.EVENTS_AFTER, params)
    if all(event.settled for event in events):
        return events
    return await uow.rows(repo.EVENTS_AFTER, {**params, "exact": True})


def sse_message(event: StreamedEvent) -> bytes:
    data = asdict(event)
    del data["transaction_id"], data["settled"]
    return b"id: %d\nevent: order_event\ndata: %s\n\n" % (event.id, orjson.dumps(data))


KEEP_ALIVE = b": keep-alive\n\n"


class StreamSlots:
    """At most `per_principal` open streams per principal (a person, or a key) in this
    process: a forgotten tab or a looping client cannot hold every connection."""

    def __init__(self, per_principal: int) -> None:
        self._per_principal = per_principal
        self._open: Counter[tuple[int, int | None]] = Counter()

    def claim(self, principal: Principal) -> Callable[[], None]:
        """Claim a slot (429 if none is free); returns its release, safe to call twice."""
        who = (principal.user_id, principal.api_key_id)
        if self._open[who] >= self._per_principal:
            raise TooManyStreams(
                f"At most {self._per_principal} event streams may be open at once per user or "
                "key; close one first.",
                headers={"Retry-After": "5"},
            )
        self._open[who] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._open[who] -= 1
                if self._open[who] <= 0:
                    del self._open[who]

        return release


@dataclass(frozen=True, slots=True)
class Follow:
    """What a stream needs besides its position; `identify` starts each read's transaction
    (authenticating again, so a revoked key or ended session ends the stream)."""

    db: Database
    listener: Listener
    identify: Identify
    heartbeat_seconds: float
    retry_attempts: int = 3


async def follow(how: Follow, principal: Principal, position: Position) -> AsyncIterator[bytes]:
    """The stream's messages: events in order as they settle, keep-alives in between."""
    with how.listener.subscribe(on_desks(principal)) as subscription:
        last_sent = time.monotonic()
        held_look = HELD_BACK_FIRST_LOOK
        while True:
            batch = await _read(how, position)
            if batch is None:
                return  # the caller may no longer read: end the stream
            settled = [event for event in batch if event.settled]
            for event in settled:
                yield sse_message(event)
            if settled:
                position = Position(settled[-1].transaction_id, settled[-1].id)
                last_sent = time.monotonic()
            if len(batch) == BATCH and len(settled) == BATCH:
                continue  # more to catch up on
            if len(settled) < len(batch):  # held back behind an older open transaction
                await subscription.wait(held_look)
                held_look = min(HELD_BACK_LAST_LOOK, held_look * 2)
            else:
                held_look = HELD_BACK_FIRST_LOOK
                quiet_for = how.heartbeat_seconds - (time.monotonic() - last_sent)
                await subscription.wait(max(0.0, quiet_for))
            if time.monotonic() - last_sent >= how.heartbeat_seconds:
                yield KEEP_ALIVE
                last_sent = time.monotonic()


async def _read(how: Follow, position: Position) -> list[StreamedEvent] | None:
    """The events after `position`, in a short transaction of their own; [] while the
    database is unavailable (looked at again next time); None when the stream must end: the
    caller was refused, or something unforeseen failed (the 200 is sent: no problem
    document can follow, so the stream ends cleanly and the client reconnects)."""

    async def read(uow: UnitOfWork) -> list[StreamedEvent]:
        principal = await how.identify(uow)
        authorize(principal, Action.READ_ORDERS)
        return await events_after(uow, principal, position)

    try:
        return await in_transaction(how.db, read, attempts=how.retry_attempts)
    except DomainError as refused:
        log.info("event stream ended: caller refused", detail=refused.detail)
        return None
    except Exception as error:
        if not is_transient(error):
            log.exception("event stream ended by an error")
            return None
        log.warning("event stream waits for the database", error=str(error))
        await asyncio.sleep(1.0)
        return []
