"""Reading and checkpointing the audit trail (recording.py writes it, verification.py
verifies it)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field

from tradeops.audit import repository as repo
from tradeops.audit.chain import GENESIS, fold_root, sign_checkpoint
from tradeops.audit.repository import AuditFilters, Checkpoint
from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.db.uow import UnitOfWork
from tradeops.decimals import plain
from tradeops.errors import Forbidden


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


async def list_events(
    uow: UnitOfWork,
    principal: Principal,
    wanted: AuditFilters,
    *,
    limit: int,
    after: int | None = None,
) -> AuditPage:
    """Oldest first, so a reader can follow the trail with `after` as it grows. Row-level
    security shows the caller's desks' events and the desk-less ones (migration 0009)."""
    authorize(principal, Action.READ_AUDIT)
    statement = repo.filtered_events(wanted, after=after, limit=limit + 1)
    rows = await uow.rows_of(statement, repo.ListedEvent)
    items = [
        AuditEventOut.model_validate(
            asdict(r) | {"before": _payload(r.before), "after": _payload(r.after)}
        )
        for r in rows[:limit]
    ]
    return AuditPage(items=items, next_cursor=str(items[-1].id) if len(rows) > limit else None)


# --- checkpoints -------------------------------------------------------------------------------


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


async def create_checkpoint(
    uow: UnitOfWork, principal: Principal, audit_key: bytes, *, settle_seconds: float = 300
) -> Checkpoint | None:
    """Sign the trail up to its newest settled event; None when nothing new has settled."""
    authorize_whole_trail(principal)
    await uow.execute(repo.CHECKPOINT_LOCK)
    last = await uow.row(repo.LAST_CHECKPOINT)
    upto, events, root, previous = (
        (last.upto_id, last.events, last.root_hash, last.signature) if last else (0, 0, GENESIS, "")
    )
    rows = await uow.rows(repo.SETTLED_HASHES, {"after": upto, "settle": settle_seconds})
    if not rows:
        return None
    for row in rows:
        root = fold_root(root, row.hash)
    upto, events = rows[-1].id, events + len(rows)
    signature = sign_checkpoint(
        audit_key, upto_id=upto, events=events, root_hash=root, previous=previous
    )
    checkpoint = Checkpoint(upto_id=upto, events=events, root_hash=root, signature=signature)
    await uow.execute(repo.INSERT_CHECKPOINT, asdict(checkpoint))
    return checkpoint
