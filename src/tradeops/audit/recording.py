"""Recording audit events: what every domain (auth and desks among them) calls in its own
transaction. It imports nothing from auth, so auth can record below the trail's reading side
(service.py, verification.py), which authorizes with auth's permissions."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Protocol

import orjson
from pydantic import BaseModel

from tradeops.audit import repository as repo
from tradeops.db.uow import UnitOfWork
from tradeops.decimals import plain


class Actor(Protocol):
    """Who acted, as far as the trail names them (`auth.principal.Principal` is one)."""

    @property
    def user_id(self) -> int: ...
    @property
    def api_key_id(self) -> int | None: ...


def _json_default(value: object) -> str:
    # Decimals as the API writes them ("50", not "50.000000"); payloads built in SQL keep
    # jsonb numbers, which the list renders the same way (service._payload).
    return plain(value) if isinstance(value, Decimal) else str(value)


def as_payload(value: Any) -> str | None:
    """A state as the trail stores it (JSON text), whoever appends the event."""
    if value is None:
        return None
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return orjson.dumps(value, default=_json_default).decode()


async def record(
    uow: UnitOfWork,
    principal: Actor | None,
    action: str,
    entity: str,
    entity_id: object,
    *,
    before: Any = None,
    after: Any = None,
    acting_user: int | None = None,
) -> None:
    """Append one event in the caller's transaction: it commits or rolls back with the change.
    The database labels it with the desk it concerns (see migration 0009) and, in a request
    context, with the context's actor, key and request (migration 0011): the transaction's
    principal, whom row-level security already knows. Where no context is set, the actor is
    `acting_user` (sign-in: the account tried), else `principal`, else anonymous; the
    database writes the name (migration 0021)."""
    event = {
        "action": action,
        "entity": entity,
        "entity_id": str(entity_id),
        "before": as_payload(before),
        "after": as_payload(after),
    }
    if acting_user is None and uow.principal is not None:
        await uow.execute(repo.RECORD, event)
        return
    key_id = None
    if acting_user is None and principal is not None:
        acting_user, key_id = principal.user_id, principal.api_key_id
    named = {"user_id": acting_user, "api_key_id": key_id, "request_id": uow.request_id}
    await uow.execute(repo.RECORD_AS, event | named)
