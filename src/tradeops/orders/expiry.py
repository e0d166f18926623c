"""Expiry: an open order whose time has passed becomes EXPIRED, by the system, never by
default approved. Silence is not consent: an order nobody decided on in time expires.

A DAY order's time is its desk's next cut-off after it was submitted (desks.time_zone and
day_cutoff; the intake trigger of migration 0017 stores it in orders.expire_at), a GTD
order's is its expire_at, a GTC order has none. The sweep (a periodic job) moves due
orders in batches; each batch is one statement that locks the orders it takes and skips
those another sweep holds, so two workers sweeping at once expire each order once.
"""

from __future__ import annotations

from tradeops.auth.principal import SYSTEM
from tradeops.db.pool import Database
from tradeops.db.uow import UnitOfWork, run_in_transaction
from tradeops.orders import repository as repo
from tradeops.orders.states import OrderStatus

EXPIRY_ACTOR = "system:expiry"


async def expire_due_batch(uow: UnitOfWork, batch: int) -> list[int]:
    """Expire up to `batch` due orders in the caller's transaction; their ids."""
    rows = await uow.rows(
        repo.EXPIRE_DUE,
        {
            "batch": batch,
            "actor": EXPIRY_ACTOR,
            "event_type": OrderStatus.EXPIRED,
            "action": "order.expired",
        },
    )
    return sorted(row.id for row in rows)


async def expire_due_orders(
    db: Database, batch: int, *, request_id: str | None = None
) -> list[int]:
    """Expire every due order, a batch per transaction (so locks are held briefly), until a
    batch comes back short; the ids expired."""
    expired: list[int] = []
    while True:
        ids = await run_in_transaction(
            db, SYSTEM, lambda uow: expire_due_batch(uow, batch), request_id=request_id
        )
        expired.extend(ids)
        if len(ids) < batch:
            return expired
