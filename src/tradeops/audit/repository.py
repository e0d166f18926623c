"""The one way into audit_events: every writer's audit row is built here; and the trail's
reads: lists, checkpoints, and verification's bounded batches.

In a request context the database fills actor, api_key_id and request_id from it
(migration 0011). The actor's format ("user:7", "user:7/key:3") is written once, in SQL
(tradeops_actor_of, migration 0021): a writer without a context (a sign-in, before anyone
is known) passes the person's id, and one acting as someone else (the risk job's
"system:risk-check") names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
from sqlalchemy import BigInteger, Select, Text, cast, func, select

from tradeops.audit.models import AuditEvent
from tradeops.auth.models import User
from tradeops.db.base import table_of
from tradeops.db.prepared import prepare, query
from tradeops.db.uow import UnitOfWork
from tradeops.desks.models import Desk

audit_events = table_of(AuditEvent)
desks = table_of(Desk)
users = table_of(User)

_COLUMNS = "stream, action, entity, entity_id, before, after"
_NAMED = ", actor, api_key_id, request_id"


def append_audit(
    *,
    entity: str,
    entity_id: str,
    after: str,
    before: str = "NULL",
    action: str = ":action",
    source: str = "",
    named: str = "",
) -> str:
    """An INSERT of audit events, one per row of `source` (a FROM clause; none: one event).

    Each argument is an SQL expression from this code, never from input (hence the noqa):
    `entity` the kind ("'order'"), `entity_id` its key as text, `before` and `after` its
    jsonb states. `named` gives the actor, key and request where the context does not, as
    three expressions ("CAST(:actor AS text), NULL, :request_id")."""
    columns = _COLUMNS + (_NAMED if named else "")
    stream = f"{entity} || ':' || {entity_id}"
    values = f"{stream}, {action}, {entity}, {entity_id}, {before}, {after}"
    values += f", {named}" if named else ""
    return f"INSERT INTO audit_events ({columns}) SELECT {values}" + (  # noqa: S608
        f" FROM {source}" if source else ""
    )


# One event from parameters, in the context's name, or in a named actor's (sign-in).
_EVENT = {
    "entity": "CAST(:entity AS text)",
    "entity_id": "CAST(:entity_id AS text)",
    "before": "CAST(:before AS jsonb)",
    "after": "CAST(:after AS jsonb)",
}
RECORD = prepare(append_audit(**_EVENT))
# Without a context: the person acting (tradeops_actor_of, migration 0021), else anonymous.
RECORD_AS = prepare(
    append_audit(
        **_EVENT,
        named="COALESCE(tradeops_actor_of(CAST(:user_id AS bigint), CAST(:api_key_id AS bigint)),"
        " 'anonymous'), CAST(:api_key_id AS bigint), :request_id",
    )
)


# --- reading the trail ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditFilters:
    """Which events a list shows; None: any. `at_to` is exclusive."""

    entity: str | None = None
    entity_id: str | None = None
    action: str | None = None
    actor: str | None = None
    desk: str | None = None
    at_from: datetime | None = None
    at_to: datetime | None = None


@dataclass(frozen=True, slots=True)
class EventFields:
    """What an event says, as stored (and hashed)."""

    id: int
    stream: str
    seq: int
    at: datetime
    actor: str
    api_key_id: int | None
    request_id: str | None
    action: str
    entity: str
    entity_id: str


@dataclass(frozen=True, slots=True)
class ListedEvent(EventFields):
    """An event as the list shows it; before and after as the stored jsonb's text."""

    before: str | None
    after: str | None
    hash: str
    desk: str | None
    actor_email: str | None


# "user:7" and "user:7/key:3" name user 7 (a key acts as its owner); "system:…" no user.
_ACTOR_USER_ID = cast(func.substring(audit_events.c.actor, r"^user:(\d+)"), BigInteger)


def _events_view() -> Select[Any]:
    """Events with their desk's code and the actor's email. Both joins run under row-level
    security: a user row the caller may not see leaves the email out, never the event."""
    shown = [
        cast(c, Text).label(c.name) if c.name in ("before", "after") else c
        for c in audit_events.c
        if c.name not in ("prev_hash", "desk_id")
    ]
    return (
        select(*shown, desks.c.code.label("desk"), users.c.email.label("actor_email"))
        .select_from(audit_events)
        .outerjoin(desks, desks.c.id == audit_events.c.desk_id)
        .outerjoin(users, users.c.id == _ACTOR_USER_ID)
    )


def filtered_events(wanted: AuditFilters, *, after: int | None, limit: int) -> Select[Any]:
    statement = _events_view()
    filters = [
        (wanted.entity, audit_events.c.entity),
        (wanted.entity_id, audit_events.c.entity_id),
        (wanted.action, audit_events.c.action),
        (wanted.actor, audit_events.c.actor),
        (wanted.desk, desks.c.code),
    ]
    for value, column in filters:
        if value is not None:
            statement = statement.where(column == value)
    if wanted.at_from is not None:
        statement = statement.where(audit_events.c.at >= wanted.at_from)
    if wanted.at_to is not None:
        statement = statement.where(audit_events.c.at < wanted.at_to)
    if after is not None:
        statement = statement.where(audit_events.c.id > after)
    return statement.order_by(audit_events.c.id).limit(limit)


# --- checkpoints ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    upto_id: int
    events: int
    root_hash: str
    signature: str


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    id: int
    upto_id: int
    events: int
    root_hash: str
    signature: str


@dataclass(frozen=True, slots=True)
class EventHash:
    id: int
    hash: str


CHECKPOINT_LOCK = prepare("SELECT pg_advisory_xact_lock(hashtext('tradeops.audit.checkpoint'))")
LAST_CHECKPOINT = query(
    "SELECT upto_id, events, root_hash, signature FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
    Checkpoint,
)
# Events committed late can carry an id below one already seen; only events older than the
# settle time are checkpointed, by when every transaction that wrote one has finished.
SETTLED_HASHES = query(
    "SELECT id, hash FROM audit_events WHERE id > :after AND id <= ("
    " SELECT max(id) FROM audit_events WHERE at < now() - make_interval(secs => :settle))"
    " ORDER BY id",
    EventHash,
)
INSERT_CHECKPOINT = prepare(
    "INSERT INTO audit_checkpoints (upto_id, events, root_hash, signature, at)"
    " VALUES (:upto_id, :events, :root_hash, :signature, now())"
)


# --- verification: bounded reads (verification.py) -----------------------------------------


class ChainedEvent(NamedTuple):
    """An event with what verifying it needs: its hashed fields as the hash saw them, the hash
    of its stream's previous event (None when there is none), and whether its desk label is
    still the desk the database derives from the hashed fields.

    A NamedTuple, typed and immutable like the frozen dataclasses elsewhere, because a full
    verification builds one per event: from a record it takes ~1 µs, a frozen dataclass ~10."""

    id: int
    stream: str
    seq: int
    at: datetime
    actor: str
    api_key_id: int | None
    request_id: str | None
    action: str
    entity: str
    entity_id: str
    before_text: str | None
    after_text: str | None
    prev_hash: str
    hash: str
    desk_matches: bool
    predecessor_hash: str | None


@dataclass(frozen=True, slots=True)
class NewestCheckpoint(StoredCheckpoint):
    """The newest checkpoint, the signature it chains to, and whether its last event exists."""

    previous_signature: str
    last_event_present: bool


@dataclass(frozen=True, slots=True)
class Horizon:
    """What exists when a verification starts: it checks nothing newer."""

    last_event_id: int
    last_checkpoint_id: int


@dataclass(frozen=True, slots=True)
class HeadCheck:
    """A stream's recorded head, and whether it is the stream's last event, as written."""

    stream: str
    seq: int
    holds: bool


HORIZON = query(
    "SELECT COALESCE((SELECT max(id) FROM audit_events), 0) AS last_event_id,"
    " COALESCE((SELECT max(id) FROM audit_checkpoints), 0) AS last_checkpoint_id",
    Horizon,
)
_CHECKPOINT_COLUMNS = "c.id, c.upto_id, c.events, c.root_hash, c.signature"
NEWEST_CHECKPOINT = query(
    f"SELECT {_CHECKPOINT_COLUMNS},"  # noqa: S608 - constants only
    " COALESCE((SELECT p.signature FROM audit_checkpoints p WHERE p.id < c.id"
    "  ORDER BY p.id DESC LIMIT 1), '') AS previous_signature,"
    " EXISTS (SELECT FROM audit_events e WHERE e.id = c.upto_id) AS last_event_present"
    " FROM audit_checkpoints c WHERE c.id <= :upto ORDER BY c.id DESC LIMIT 1",
    NewestCheckpoint,
)
CHECKPOINTS_AFTER = query(
    f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints c"  # noqa: S608 - constants only
    " WHERE c.id > :after AND c.id <= :upto ORDER BY c.id LIMIT :batch",
    StoredCheckpoint,
)
# desk_id is outside the hash (migration 0009), so it is compared with the desk the database
# derives from the hashed fields: a relabelled event could otherwise be hidden from its desk's
# auditors or shown to another desk's. The previous event of the stream is joined by (stream,
# seq) in the same snapshot, so a chain is checked across batches, whatever order ids were
# given in, without remembering every stream. The previous seq is computed inside the
# subquery: under row-level security a condition with `-` (not leakproof) may not be an index
# condition, and the lookup would scan the whole stream; LATERAL ... LIMIT 1 (never
# flattened into a join) keeps it one index lookup per event: a hash join would read the whole
# table for every batch.
EVENTS_AFTER = query(
    "SELECT e.id, e.stream, e.seq, e.at, e.actor, e.api_key_id, e.request_id, e.action,"
    " e.entity, e.entity_id, e.before_text, e.after_text, e.prev_hash, e.hash,"
    " e.desk_matches, p.hash AS predecessor_hash"
    " FROM (SELECT id, stream, seq, at, actor, api_key_id, request_id, action, entity,"
    "  entity_id, before::text AS before_text, after::text AS after_text, prev_hash, hash,"
    "  desk_id IS NOT DISTINCT FROM audit_event_desk(entity, entity_id, before, after)"
    "   AS desk_matches, seq - 1 AS previous_seq"
    "  FROM audit_events WHERE id > :after AND id <= :upto ORDER BY id LIMIT :batch) e"
    " LEFT JOIN LATERAL (SELECT hash FROM audit_events p"
    "  WHERE p.stream = e.stream AND p.seq = e.previous_seq LIMIT 1) p ON true"
    " ORDER BY e.id",
    ChainedEvent,
)
# A head holds when it is its stream's event (same hash) and no event follows it. The next seq
# is computed behind OFFSET 0 for the reason above.
_HEAD_HOLDS = (
    "SELECT h.stream, h.seq, e.hash IS NOT DISTINCT FROM h.hash AND n.stream IS NULL AS holds"
    " FROM (SELECT stream, seq, hash, seq + 1 AS next_seq FROM audit_stream_heads"
    "  WHERE {which} ORDER BY stream LIMIT :batch OFFSET 0) h"
    " LEFT JOIN LATERAL (SELECT hash FROM audit_events e"
    "  WHERE e.stream = h.stream AND e.seq = h.seq LIMIT 1) e ON true"
    " LEFT JOIN LATERAL (SELECT stream FROM audit_events n"
    "  WHERE n.stream = h.stream AND n.seq = h.next_seq LIMIT 1) n ON true"
    " ORDER BY h.stream"
)
HEADS_AFTER = query(_HEAD_HOLDS.format(which="stream > :after"), HeadCheck)
HEADS_OF = query(_HEAD_HOLDS.format(which="stream = ANY(CAST(:streams AS text[]))"), HeadCheck)


async def horizon(uow: UnitOfWork) -> Horizon:
    found = await uow.row(HORIZON)
    assert found is not None  # an aggregate without GROUP BY answers one row
    return found


async def last_checkpoint(uow: UnitOfWork, *, upto: int) -> NewestCheckpoint | None:
    """The newest checkpoint with an id up to `upto`, if any."""
    return await uow.row(NEWEST_CHECKPOINT, {"upto": upto})


async def checkpoints_after(
    uow: UnitOfWork, *, after: int, upto: int, batch: int
) -> list[StoredCheckpoint]:
    """At most `batch` checkpoints with ids in (after, upto], in the order they were signed."""
    return await uow.rows(CHECKPOINTS_AFTER, {"after": after, "upto": upto, "batch": batch})


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Events as read, typed on demand: `events()` costs microseconds an event, which a
    verifier spends in its worker thread rather than on the event loop."""

    records: list[asyncpg.Record]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last_id(self) -> int:
        last: int = self.records[-1]["id"]
        return last

    def events(self) -> list[ChainedEvent]:
        return [ChainedEvent._make(record) for record in self.records]


async def events_after(uow: UnitOfWork, *, after: int, upto: int, batch: int) -> EventBatch:
    """At most `batch` events with ids in (after, upto], oldest first."""
    statement = EVENTS_AFTER.prepared
    params = {"after": after, "upto": upto, "batch": batch}
    return EventBatch(await uow.driver.fetch(statement.sql, *statement.arguments(params)))


async def heads_after(uow: UnitOfWork, *, after: str, batch: int) -> list[HeadCheck]:
    """At most `batch` stream heads after the stream `after`, in stream order."""
    return await uow.rows(HEADS_AFTER, {"after": after, "batch": batch})


async def heads_of(uow: UnitOfWork, streams: Sequence[str]) -> list[HeadCheck]:
    """The heads of the named streams (a batch of them)."""
    return await uow.rows(HEADS_OF, {"streams": list(streams), "batch": len(streams)})
