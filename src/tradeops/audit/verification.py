"""Verifying the audit trail: every event's hash, every stream's chain, every signed checkpoint.

Bounded, however long the trail: events are read `batch` at a time by id, each batch in a short
read transaction of its own (no connection, transaction or snapshot is held between batches),
and hashed in a worker thread, so the process goes on answering requests meanwhile. Each batch
is consistent in itself: an event is read with its stream's previous event in one snapshot,
and a checkpoint, made only of settled events, is read only if it existed when verification
began (`Horizon`), so every event it covers was committed before any batch was read.

Incremental by default: the newest checkpoint's signature is checked (with the key the
database never sees, so no one with only database access can forge it) and only the events
after it are hashed, chained on from its root. The events it covers were proved when it was
signed and are proved again by a full verification (`full=True`), which starts from the first
event. What an incremental verification cannot see: a change to an event the checkpoint
covers, and a removed tail of a stream with no event after the checkpoint; a full one sees
both.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial
from typing import Protocol, TypeVar

from pydantic import BaseModel, Field

from tradeops.audit import repository
from tradeops.audit.chain import GENESIS, event_hash, fold_root, sign_checkpoint, signature_matches
from tradeops.audit.repository import (
    ChainedEvent,
    EventBatch,
    HeadCheck,
    Horizon,
    NewestCheckpoint,
    StoredCheckpoint,
)
from tradeops.audit.service import authorize_whole_trail
from tradeops.auth.principal import Principal
from tradeops.db.uow import ConnectionSource, UnitOfWork, run_in_transaction

T = TypeVar("T")


class Read(Protocol):
    """Runs one read in a short transaction of its own, as the verifying principal."""

    def __call__(self, command: Callable[[UnitOfWork], Awaitable[T]], /) -> Awaitable[T]: ...


def _reader(db: ConnectionSource, principal: Principal) -> Read:
    async def read(command: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        return await run_in_transaction(db, principal, command)

    return read


class BrokenEvent(BaseModel):
    id: int | None
    stream: str | None
    seq: int | None
    reason: str


class VerificationReport(BaseModel):
    ok: bool
    full: bool = Field(description="true: from the first event; false: after `from_checkpoint`")
    from_checkpoint: int | None = Field(
        default=None,
        description="The signed checkpoint whose signature was checked and after which events"
        " were hashed (incremental); null for a full verification or a trail never signed",
    )
    upto_id: int = Field(default=0, description="The newest event when verification began")
    events_checked: int
    streams_checked: int
    checkpoints_checked: int
    first_broken: BrokenEvent | None = None


async def verify(
    db: ConnectionSource,
    principal: Principal,
    audit_key: bytes,
    *,
    full: bool = False,
    batch: int = 5000,
) -> VerificationReport:
    """Recompute the hash and chain link of every event after the newest signed checkpoint
    (every event with `full`), every checkpoint's root and signature, and every stream's head;
    stop at the first thing that does not hold. Needs a view of every desk (risk, admin)."""
    authorize_whole_trail(principal)
    read = _reader(db, principal)
    horizon = await read(repository.horizon)
    last_signed = partial(repository.last_checkpoint, upto=horizon.last_checkpoint_id)
    start = None if full else await read(last_signed)
    verifier = _Verifier(audit_key, full=full)
    if start is not None and not verifier.start_from(start):
        return verifier.report(horizon)
    await _check_events(read, verifier, horizon, start, batch)
    if verifier.broken is None:
        await _check_heads(read, verifier, batch)
    return verifier.report(horizon)


async def _check_events(
    read: Read, verifier: _Verifier, horizon: Horizon, start: NewestCheckpoint | None, batch: int
) -> None:
    checkpoints = _Checkpoints(start.id if start else 0, horizon.last_checkpoint_id)
    verifier.pending = checkpoints.queue

    def fetch(after: int) -> asyncio.Task[EventBatch]:
        window = partial(
            repository.events_after, after=after, upto=horizon.last_event_id, batch=batch
        )
        return asyncio.ensure_future(read(window))

    next_batch = fetch(start.upto_id if start else 0)
    try:
        while True:
            events = await next_batch
            if len(events) == batch:  # read the next batch while this one is hashed
                next_batch = fetch(events.last_id)
            await checkpoints.cover(read, events.last_id if events else 0, batch)
            # Typing and hashing is CPU work: in a thread, so the event loop serves requests.
            if events and not await asyncio.to_thread(verifier.check_batch, events):
                return
            if len(events) < batch:
                break
    finally:
        # A batch read ahead of a failure is let finish, not cancelled: a read cancelled
        # mid-transaction can leave its connection behind, still in the transaction.
        with suppress(Exception):
            await next_batch
    verifier.finish_checkpoints()


async def _check_heads(read: Read, verifier: _Verifier, batch: int) -> None:
    """Every stream's recorded head is its last event (a full verification), or the heads of
    the streams it saw events of (incremental): a tail removed with its head left is caught."""
    if verifier.full:
        after = ""
        while True:
            heads = await read(partial(repository.heads_after, after=after, batch=batch))
            if not verifier.check_heads(heads) or len(heads) < batch:
                return
            after = heads[-1].stream
    streams = sorted(verifier.streams)
    for first in range(0, len(streams), batch):
        chunk = streams[first : first + batch]
        if not verifier.check_heads(await read(partial(repository.heads_of, streams=chunk))):
            return


class _Checkpoints:
    """The checkpoints still to meet, read in batches as the events reach them."""

    def __init__(self, after_id: int, upto_id: int) -> None:
        self.queue: deque[StoredCheckpoint] = deque()
        self.last_read = after_id
        self.upto_id = upto_id
        self.exhausted = after_id >= upto_id

    async def cover(self, read: Read, event_id: int, batch: int) -> None:
        """Read on until a checkpoint beyond `event_id` is queued, or none is left."""
        while not self.exhausted and (not self.queue or self.queue[-1].upto_id <= event_id):
            more = await read(
                partial(
                    repository.checkpoints_after,
                    after=self.last_read,
                    upto=self.upto_id,
                    batch=batch,
                )
            )
            self.queue.extend(more)
            self.last_read = more[-1].id if more else self.last_read
            self.exhausted = len(more) < batch


class _Verifier:
    """The running state: the rolling root and count the checkpoints sign, the first failure.
    Its check_* methods are plain CPU work, called one at a time."""

    def __init__(self, key: bytes, *, full: bool) -> None:
        self.key = key
        self.full = full
        self.pending: deque[StoredCheckpoint] = deque()
        self.previous_signature = ""
        self.root = GENESIS
        self.count = 0  # events since the first, as checkpoints count them
        self.checked = 0
        self.checkpoints_checked = 0
        self.streams: set[str] = set()
        self.streams_checked = 0
        self.from_checkpoint: int | None = None
        self.broken: BrokenEvent | None = None

    def fail(self, reason: str, event: ChainedEvent | None = None, **where: object) -> bool:
        self.broken = BrokenEvent.model_validate(
            {"id": None, "stream": None, "seq": None, "reason": reason}
            | ({"id": event.id, "stream": event.stream, "seq": event.seq} if event else where)
        )
        return False

    def start_from(self, checkpoint: NewestCheckpoint) -> bool:
        """Chain on from a checkpoint whose signature holds and whose last event exists."""
        self.from_checkpoint = checkpoint.id
        self.checkpoints_checked = 1
        if not self.signed(checkpoint, previous=checkpoint.previous_signature):
            return self.fail(f"checkpoint {checkpoint.id} is not signed with the audit key")
        if not checkpoint.last_event_present:
            return self.fail(
                f"checkpoint {checkpoint.id} covers events that are missing (tail removed)"
            )
        self.root, self.count = checkpoint.root_hash, checkpoint.events
        self.previous_signature = checkpoint.signature
        return True

    def check_batch(self, batch: EventBatch) -> bool:
        return all(self.check_event(event) for event in batch.events())

    def check_event(self, event: ChainedEvent) -> bool:
        previous = GENESIS if event.seq == 1 else event.predecessor_hash
        if previous is None:
            return self.fail(f"sequence gap in stream: seq {event.seq - 1} is missing", event)
        if event.prev_hash != previous:
            return self.fail("prev_hash does not match the previous event of the stream", event)
        recomputed = event_hash(
            prev_hash=event.prev_hash,
            stream=event.stream,
            seq=event.seq,
            at=event.at,
            actor=event.actor,
            api_key_id=event.api_key_id,
            request_id=event.request_id,
            action=event.action,
            entity=event.entity,
            entity_id=event.entity_id,
            before_text=event.before_text,
            after_text=event.after_text,
        )
        if recomputed != event.hash:
            return self.fail(
                "content does not match its hash (changed after it was written)", event
            )
        if not event.desk_matches:
            return self.fail(
                "desk label does not match the event (changed after it was written)", event
            )
        self.root = fold_root(self.root, event.hash)
        self.count += 1
        self.checked += 1
        if not self.full:
            self.streams.add(event.stream)
        return self.check_checkpoints(event)

    def check_checkpoints(self, event: ChainedEvent) -> bool:
        while self.pending and self.pending[0].upto_id <= event.id:
            checkpoint = self.pending.popleft()
            if event.id > checkpoint.upto_id:
                return self.fail(f"checkpoint {checkpoint.id} covers a missing event", event)
            if not self.checkpoint_holds(checkpoint):
                return self.fail(f"checkpoint {checkpoint.id} does not match the trail", event)
            self.checkpoints_checked += 1
        return True

    def signed(self, checkpoint: StoredCheckpoint, *, previous: str) -> bool:
        """Whether `checkpoint` is signed with the audit key, chained to `previous`."""
        expected = sign_checkpoint(
            self.key,
            upto_id=checkpoint.upto_id,
            events=checkpoint.events,
            root_hash=checkpoint.root_hash,
            previous=previous,
        )
        return signature_matches(expected, checkpoint.signature)

    def checkpoint_holds(self, checkpoint: StoredCheckpoint) -> bool:
        signed = self.signed(checkpoint, previous=self.previous_signature)
        self.previous_signature = checkpoint.signature
        return signed and checkpoint.events == self.count and checkpoint.root_hash == self.root

    def finish_checkpoints(self) -> None:
        if self.pending:
            missing = self.pending[0]
            self.fail(f"checkpoint {missing.id} covers events that are missing (tail removed)")

    def check_heads(self, heads: list[HeadCheck]) -> bool:
        for head in heads:
            if not head.holds:
                return self.fail(
                    f"stream {head.stream} does not end at its recorded head (seq {head.seq})",
                    stream=head.stream,
                    seq=head.seq,
                )
            self.streams_checked += 1
        return True

    def report(self, horizon: Horizon) -> VerificationReport:
        return VerificationReport(
            ok=self.broken is None,
            full=self.full,
            from_checkpoint=self.from_checkpoint,
            upto_id=horizon.last_event_id,
            events_checked=self.checked,
            streams_checked=self.streams_checked,
            checkpoints_checked=self.checkpoints_checked,
            first_broken=self.broken,
        )
