"""Writing, reading, checkpointing and verifying the audit trail."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from pydantic import BaseModel, Field
from sqlalchemy import BigInteger, Select, Text, cast, func, select, text

from tradeops.audit.chain import GENESIS, event_hash, fold_root, sign_checkpoint, signature_matches
from tradeops.audit.models import AuditEvent
from tradeops.auth.models import User
from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.db.base import table_of
from tradeops.db.uow import UnitOfWork
from tradeops.decimals import plain
from tradeops.desks.models import Desk
from tradeops.errors import Forbidden

audit_events = table_of(AuditEvent)
desks = table_of(Desk)
users = table_of(User)

# In a request context the database fills actor, api_key_id and request_id from it
# (migration 0011), so the actor's format ("user:7", "user:7/key:3") is written once, in SQL.
_RECORD = text(
    "INSERT INTO audit_events (stream, action, entity, entity_id, before, after)"
    " VALUES (:entity || ':' || :entity_id, :action, :entity, :entity_id,"
    " CAST(:before AS jsonb), CAST(:after AS jsonb))"
)
# Without a context (a sign-in, before anyone is known) the caller names the actor.
_RECORD_AS = text(
    "INSERT INTO audit_events (stream, actor, api_key_id, request_id, action, entity, entity_id,"
    " before, after)"
    " VALUES (:entity || ':' || :entity_id, :actor, :api_key_id, :request_id, :action, :entity,"
    " :entity_id, CAST(:before AS jsonb), CAST(:after AS jsonb))"
)


def _json_default(value: object) -> str:
    # Decimals as the API writes them ("50", not "50.000000"); payloads built in SQL keep
    # jsonb numbers, which the list renders the same way (_payload).
    return plain(value) if isinstance(value, Decimal) else str(value)


def _json(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return orjson.dumps(value, default=_json_default).decode()


async def record(
    uow: UnitOfWork,
    principal: Principal | None,
    action: str,
    entity: str,
    entity_id: object,
    *,
    before: Any = None,
    after: Any = None,
    actor: str | None = None,
) -> None:
    """Append one event in the caller's transaction: it commits or rolls back with the change.
    The database labels it with the desk it concerns (see migration 0009) and, in a request
    context, with the context's actor, key and request (migration 0011): the transaction's
    principal, whom row-level security already knows. `actor` names who acted where no
    context is set (sign-in)."""
    event = {
        "action": action,
        "entity": entity,
        "entity_id": str(entity_id),
        "before": _json(before),
        "after": _json(after),
    }
    if actor is None and uow.principal is not None:
        await uow.execute(_RECORD, event)
        return
    explicit = {
        "actor": actor or (principal.actor if principal else "anonymous"),
        "api_key_id": principal.api_key_id if principal and not actor else None,
        "request_id": uow.request_id,
    }
    await uow.execute(_RECORD_AS, event | explicit)


def _plain_decimal(literal: str) -> str:
    return plain(Decimal(literal))


def _payload(document: str | None) -> Any:
    """A stored payload as the API shows amounts: decimals as plain strings ("50", "192.55"),
    read from the exact text of the jsonb number (a float would round large amounts). The
    stored, hashed payload stays as written; integers (ids, versions) stay numbers."""
    return None if document is None else json.loads(document, parse_float=_plain_decimal)


class AuditEventOut(BaseModel):
    id: int
    stream: str
    seq: int
    at: datetime
    actor: str
    actor_email: str | None = Field(
        description="The acting user's email (for a key, its owner's); null when the actor"
        " is no user (system:…, anonymous)"
    )
    api_key_id: int | None
    request_id: str | None
    action: str
    entity: str
    entity_id: str
    desk: str | None = Field(description="The desk the event concerns; null for users, keys, …")
    before: Any
    after: Any
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None


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


def _filtered(
    *,
    entity: str | None,
    entity_id: str | None,
    action: str | None,
    actor: str | None,
    desk: str | None,
    at_from: datetime | None,
    at_to: datetime | None,
    after: int | None,
) -> Select[Any]:
    statement = _events_view()
    filters = [
        (entity, audit_events.c.entity),
        (entity_id, audit_events.c.entity_id),
        (action, audit_events.c.action),
        (actor, audit_events.c.actor),
        (desk, desks.c.code),
    ]
    for value, column in filters:
        if value is not None:
            statement = statement.where(column == value)
    if at_from is not None:
        statement = statement.where(audit_events.c.at >= at_from)
    if at_to is not None:
        statement = statement.where(audit_events.c.at < at_to)
    if after is not None:
        statement = statement.where(audit_events.c.id > after)
    return statement.order_by(audit_events.c.id)


async def list_events(
    uow: UnitOfWork,
    principal: Principal,
    *,
    limit: int,
    after: int | None = None,
    **filters: Any,
) -> AuditPage:
    """Oldest first, so a reader can follow the trail with `after` as it grows. Row-level
    security shows the caller's desks' events and the desk-less ones (migration 0009)."""
    authorize(principal, Action.READ_AUDIT)
    rows = (await uow.execute(_filtered(after=after, **filters).limit(limit + 1))).all()
    items = [
        AuditEventOut.model_validate(
            {**r._mapping, "before": _payload(r.before), "after": _payload(r.after)}
        )
        for r in rows[:limit]
    ]
    return AuditPage(items=items, next_cursor=str(items[-1].id) if len(rows) > limit else None)


# --- checkpoints and verification ---------------------------------------------------------

_LAST_CHECKPOINT = text(
    "SELECT upto_id, events, root_hash, signature FROM audit_checkpoints ORDER BY id DESC LIMIT 1"
)
# Events committed late can carry an id below one already seen; only events older than the
# settle time are checkpointed, by when every transaction that wrote one has finished.
_SETTLED_HASHES = text(
    "SELECT id, hash FROM audit_events WHERE id > :after AND id <= ("
    " SELECT max(id) FROM audit_events WHERE at < now() - make_interval(secs => :settle))"
    " ORDER BY id"
)
_INSERT_CHECKPOINT = text(
    "INSERT INTO audit_checkpoints (upto_id, events, root_hash, signature, at)"
    " VALUES (:upto_id, :events, :root_hash, :signature, now())"
)


def _authorize_whole_trail(principal: Principal) -> None:
    """Verifying and signing read every desk's events. Row-level security would hand a
    desk-limited caller a filtered trail, whose checkpoint root is wrong and whose verification
    proves nothing about the rest, so such a caller is refused rather than misled (the
    database refuses its checkpoints too)."""
    authorize(principal, Action.VERIFY_AUDIT)
    if not principal.all_desks:
        raise Forbidden(
            "Verifying or signing the audit trail needs a view of every desk;"
            " your key or account is limited to some desks.",
            action=Action.VERIFY_AUDIT.value,
        )


@dataclass(frozen=True)
class Checkpoint:
    upto_id: int
    events: int
    root_hash: str
    signature: str


async def create_checkpoint(
    uow: UnitOfWork, principal: Principal, audit_key: bytes, *, settle_seconds: float = 300
) -> Checkpoint | None:
    """Sign the trail up to its newest settled event; None when nothing new has settled."""
    _authorize_whole_trail(principal)
    await uow.execute(text("SELECT pg_advisory_xact_lock(hashtext('tradeops.audit.checkpoint'))"))
    last = await uow.one_or_none(_LAST_CHECKPOINT)
    upto, events, root, previous = (
        (last.upto_id, last.events, last.root_hash, last.signature) if last else (0, 0, GENESIS, "")
    )
    rows = (await uow.execute(_SETTLED_HASHES, {"after": upto, "settle": settle_seconds})).all()
    if not rows:
        return None
    for row in rows:
        root = fold_root(root, row.hash)
    upto, events = rows[-1].id, events + len(rows)
    signature = sign_checkpoint(
        audit_key, upto_id=upto, events=events, root_hash=root, previous=previous
    )
    checkpoint = Checkpoint(upto_id=upto, events=events, root_hash=root, signature=signature)
    await uow.execute(_INSERT_CHECKPOINT, asdict(checkpoint))
    return checkpoint


class BrokenEvent(BaseModel):
    id: int | None
    stream: str | None
    seq: int | None
    reason: str


class VerificationReport(BaseModel):
    ok: bool
    events_checked: int
    streams_checked: int
    checkpoints_checked: int
    first_broken: BrokenEvent | None = None


# desk_id is outside the hash (migration 0009), so it is checked against the desk the
# database derives from the hashed fields: a relabelled event could otherwise be hidden from
# its desk's auditors or shown to another desk's.
_ALL_EVENTS = text(
    "SELECT id, stream, seq, at, actor, api_key_id, request_id, action, entity, entity_id,"
    " before::text AS before_text, after::text AS after_text, prev_hash, hash, desk_id,"
    " audit_event_desk(entity, entity_id, before, after) AS derived_desk_id"
    " FROM audit_events ORDER BY id"
)
_CHECKPOINTS = text(
    "SELECT id, upto_id, events, root_hash, signature FROM audit_checkpoints ORDER BY id"
)
_HEADS = text("SELECT stream, seq, hash FROM audit_stream_heads")


async def verify(uow: UnitOfWork, principal: Principal, audit_key: bytes) -> VerificationReport:
    """Recompute every hash, every stream's chain and every checkpoint's root and signature."""
    _authorize_whole_trail(principal)
    checkpoints = list(await uow.execute(_CHECKPOINTS))
    verifier = _Verifier(audit_key, checkpoints)
    async for row in uow.stream(_ALL_EVENTS):
        if not verifier.check_event(row):
            break
    else:
        verifier.finish(list(await uow.execute(_HEADS)))
    return verifier.report()


class _Verifier:
    def __init__(self, key: bytes, checkpoints: list[Any]) -> None:
        self.key = key
        self.checkpoints = checkpoints
        self.next_checkpoint = 0
        self.previous_signature = ""
        self.streams: dict[str, tuple[int, str]] = {}
        self.root = GENESIS
        self.count = 0
        self.broken: BrokenEvent | None = None

    def fail(self, row: Any, reason: str) -> bool:
        self.broken = BrokenEvent(
            id=getattr(row, "id", None),
            stream=getattr(row, "stream", None),
            seq=getattr(row, "seq", None),
            reason=reason,
        )
        return False

    def check_event(self, row: Any) -> bool:
        last_seq, last_hash = self.streams.get(row.stream, (0, GENESIS))
        if row.seq != last_seq + 1:
            return self.fail(row, f"sequence gap in stream: expected seq {last_seq + 1}")
        if row.prev_hash != last_hash:
            return self.fail(row, "prev_hash does not match the previous event of the stream")
        recomputed = event_hash(
            prev_hash=row.prev_hash,
            stream=row.stream,
            seq=row.seq,
            at=row.at,
            actor=row.actor,
            api_key_id=row.api_key_id,
            request_id=row.request_id,
            action=row.action,
            entity=row.entity,
            entity_id=row.entity_id,
            before_text=row.before_text,
            after_text=row.after_text,
        )
        if recomputed != row.hash:
            return self.fail(row, "content does not match its hash (changed after it was written)")
        if row.desk_id != row.derived_desk_id:
            return self.fail(
                row, "desk label does not match the event (changed after it was written)"
            )
        self.streams[row.stream] = (row.seq, row.hash)
        self.root = fold_root(self.root, row.hash)
        self.count += 1
        return self.check_checkpoints(row)

    def check_checkpoints(self, row: Any) -> bool:
        while self.next_checkpoint < len(self.checkpoints):
            checkpoint = self.checkpoints[self.next_checkpoint]
            if row.id < checkpoint.upto_id:
                return True
            if row.id > checkpoint.upto_id:
                return self.fail(row, f"checkpoint {checkpoint.id} covers a missing event")
            if not self.checkpoint_holds(checkpoint):
                return self.fail(row, f"checkpoint {checkpoint.id} does not match the trail")
            self.next_checkpoint += 1
        return True

    def checkpoint_holds(self, checkpoint: Any) -> bool:
        expected = sign_checkpoint(
            self.key,
            upto_id=checkpoint.upto_id,
            events=checkpoint.events,
            root_hash=checkpoint.root_hash,
            previous=self.previous_signature,
        )
        self.previous_signature = checkpoint.signature
        return (
            checkpoint.events == self.count
            and checkpoint.root_hash == self.root
            and signature_matches(expected, checkpoint.signature)
        )

    def finish(self, heads: list[Any]) -> None:
        if self.next_checkpoint < len(self.checkpoints):
            missing = self.checkpoints[self.next_checkpoint]
            self.fail(
                None, f"checkpoint {missing.id} covers events that are missing (tail removed)"
            )
            return
        for head in heads:
            if self.streams.get(head.stream) != (head.seq, head.hash):
                self.fail(
                    None, f"stream {head.stream} ends before its recorded head (seq {head.seq})"
                )
                return

    def report(self) -> VerificationReport:
        return VerificationReport(
            ok=self.broken is None,
            events_checked=self.count,
            streams_checked=len(self.streams),
            checkpoints_checked=self.next_checkpoint,
            first_broken=self.broken,
        )
