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
    def actor(self) -> str: ...
    @property
    def api_key_id(self) -> int | None: ...


def _json_default(value: object) -> str:
    # Decimals as the API writes them ("50", not "50.000000"); payloads built in SQL keep
    # jsonb numbers, which the list renders the same way (service._payload).
    return plain(value) if isinstance(value, Decimal) else str(value)


def _json(value: Any) -> str | None:
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
        await uow.execute(repo.RECORD, event)
        return
    explicit = {
        "actor": actor or (principal.actor if principal else "anonymous"),
        "api_key_id": principal.api_key_id if principal and not actor else None,
        "request_id": uow.request_id,
    }
    await uow.execute(repo.RECORD_AS, event | explicit)
