"""Named queries over the audit trail that verification reads, each bounded: a batch of events
after an id, a batch of checkpoints after an id, a batch of stream heads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import asyncpg

from tradeops.db.prepared import prepare
from tradeops.db.uow import UnitOfWork


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
class SignedCheckpoint:
    id: int
    upto_id: int
    events: int
    root_hash: str
    signature: str


@dataclass(frozen=True, slots=True)
class LastCheckpoint:
    """The newest checkpoint, the signature it chains to, and whether its last event exists."""

    checkpoint: SignedCheckpoint
    previous_signature: str
    last_event_present: bool


@dataclass(frozen=True, slots=True)
class Horizon:
    """What exists when a verification starts: it checks nothing newer."""

    last_event_id: int
    last_checkpoint_id: int


@dataclass(frozen=True, slots=True)
class StreamHead:
    """A stream's recorded head, and whether it is the stream's last event, as written."""

    stream: str
    seq: int
    holds: bool


_HORIZON = prepare(
    "SELECT COALESCE((SELECT max(id) FROM audit_events), 0),"
    " COALESCE((SELECT max(id) FROM audit_checkpoints), 0)"
)
_CHECKPOINT_COLUMNS = "c.id, c.upto_id, c.events, c.root_hash, c.signature"
_LAST_CHECKPOINT = prepare(
    f"SELECT {_CHECKPOINT_COLUMNS},"  # noqa: S608 - constants only
    " COALESCE((SELECT p.signature FROM audit_checkpoints p WHERE p.id < c.id"
    "  ORDER BY p.id DESC LIMIT 1), ''),"
    " EXISTS (SELECT FROM audit_events e WHERE e.id = c.upto_id)"
    " FROM audit_checkpoints c WHERE c.id <= :upto ORDER BY c.id DESC LIMIT 1"
)
_CHECKPOINTS_AFTER = prepare(
    f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints c"  # noqa: S608 - constants only
    " WHERE c.id > :after AND c.id <= :upto ORDER BY c.id LIMIT :batch"
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
_EVENTS_AFTER = prepare(
    "SELECT e.id, e.stream, e.seq, e.at, e.actor, e.api_key_id, e.request_id, e.action,"
    " e.entity, e.entity_id, e.before_text, e.after_text, e.prev_hash, e.hash,"
    " e.desk_matches, p.hash"
    " FROM (SELECT id, stream, seq, at, actor, api_key_id, request_id, action, entity,"
    "  entity_id, before::text AS before_text, after::text AS after_text, prev_hash, hash,"
    "  desk_id IS NOT DISTINCT FROM audit_event_desk(entity, entity_id, before, after)"
    "   AS desk_matches, seq - 1 AS previous_seq"
    "  FROM audit_events WHERE id > :after AND id <= :upto ORDER BY id LIMIT :batch) e"
    " LEFT JOIN LATERAL (SELECT hash FROM audit_events p"
    "  WHERE p.stream = e.stream AND p.seq = e.previous_seq LIMIT 1) p ON true"
    " ORDER BY e.id"
)
# A head holds when it is its stream's event (same hash) and no event follows it. The next seq
# is computed behind OFFSET 0 for the reason above.
_HEAD_HOLDS = (
    "SELECT h.stream, h.seq, e.hash IS NOT DISTINCT FROM h.hash AND n.stream IS NULL"
    " FROM (SELECT stream, seq, hash, seq + 1 AS next_seq FROM audit_stream_heads"
    "  WHERE {which} ORDER BY stream LIMIT :batch OFFSET 0) h"
    " LEFT JOIN LATERAL (SELECT hash FROM audit_events e"
    "  WHERE e.stream = h.stream AND e.seq = h.seq LIMIT 1) e ON true"
    " LEFT JOIN LATERAL (SELECT stream FROM audit_events n"
    "  WHERE n.stream = h.stream AND n.seq = h.next_seq LIMIT 1) n ON true"
    " ORDER BY h.stream"
)
_HEADS_AFTER = prepare(_HEAD_HOLDS.format(which="stream > :after"))
_HEADS_OF = prepare(_HEAD_HOLDS.format(which="stream = ANY(CAST(:streams AS text[]))"))


async def horizon(uow: UnitOfWork) -> Horizon:
    row = (await uow.execute(_HORIZON)).one()
    return Horizon(*row)


async def last_checkpoint(uow: UnitOfWork, *, upto: int) -> LastCheckpoint | None:
    """The newest checkpoint with an id up to `upto`, if any."""
    row = await uow.one_or_none(_LAST_CHECKPOINT, {"upto": upto})
    if row is None:
        return None
    *checkpoint, previous_signature, present = row
    return LastCheckpoint(SignedCheckpoint(*checkpoint), previous_signature, present)


async def checkpoints_after(
    uow: UnitOfWork, *, after: int, upto: int, batch: int
) -> list[SignedCheckpoint]:
    """At most `batch` checkpoints with ids in (after, upto], in the order they were signed."""
    rows = await uow.execute(_CHECKPOINTS_AFTER, {"after": after, "upto": upto, "batch": batch})
    return [SignedCheckpoint(*row) for row in rows]


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
    params = {"after": after, "upto": upto, "batch": batch}
    return EventBatch(await uow.driver.fetch(_EVENTS_AFTER.sql, *_EVENTS_AFTER.arguments(params)))


async def heads_after(uow: UnitOfWork, *, after: str, batch: int) -> list[StreamHead]:
    """At most `batch` stream heads after the stream `after`, in stream order."""
    rows = await uow.execute(_HEADS_AFTER, {"after": after, "batch": batch})
    return [StreamHead(*row) for row in rows]


async def heads_of(uow: UnitOfWork, streams: Sequence[str]) -> list[StreamHead]:
    """The heads of the named streams (a batch of them)."""
    rows = await uow.execute(_HEADS_OF, {"streams": list(streams), "batch": len(streams)})
    return [StreamHead(*row) for row in rows]
