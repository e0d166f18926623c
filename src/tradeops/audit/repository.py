"""The one way into audit_events: every writer's audit row is built here.

In a request context the database fills actor, api_key_id and request_id from it
(migration 0011), so the actor's format ("user:7", "user:7/key:3") is written once, in SQL;
a writer without one (a sign-in, before anyone is known) or acting as someone else (the
risk job's "system:risk-check") names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Select, Text, cast, func, select

from tradeops.audit.models import AuditEvent
from tradeops.auth.models import User
from tradeops.db.base import table_of
from tradeops.db.prepared import prepare, query
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
RECORD_AS = prepare(
    append_audit(**_EVENT, named="CAST(:actor AS text), CAST(:api_key_id AS bigint), :request_id")
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


# --- checkpoints and verification ---------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class StoredEvent(EventFields):
    """An event with everything its hash covers, and the desk the database derives for it."""

    before_text: str | None
    after_text: str | None
    prev_hash: str
    hash: str
    desk_id: int | None
    derived_desk_id: int | None


@dataclass(frozen=True, slots=True)
class StreamHead:
    stream: str
    seq: int
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
# desk_id is outside the hash (migration 0009), so it is checked against the desk the
# database derives from the hashed fields: a relabelled event could otherwise be hidden from
# its desk's auditors or shown to another desk's.
ALL_EVENTS = query(
    "SELECT id, stream, seq, at, actor, api_key_id, request_id, action, entity, entity_id,"
    " before::text AS before_text, after::text AS after_text, prev_hash, hash, desk_id,"
    " audit_event_desk(entity, entity_id, before, after) AS derived_desk_id"
    " FROM audit_events ORDER BY id",
    StoredEvent,
)
CHECKPOINTS = query(
    "SELECT id, upto_id, events, root_hash, signature FROM audit_checkpoints ORDER BY id",
    StoredCheckpoint,
)
HEADS = query("SELECT stream, seq, hash FROM audit_stream_heads", StreamHead)
