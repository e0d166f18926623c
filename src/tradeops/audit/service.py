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

from tradeops.audit.chain import GENESIS, fold_root, sign_checkpoint
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


def authorize_whole_trail(principal: Principal) -> None:
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
    authorize_whole_trail(principal)
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
