"""Simulated fills for demos (`tradeops simulate-fills`): every approved order that is still
open is filled in full, in one fill, through the same service a venue's fills go through.

The price is the instrument's latest market snapshot, or the limit price when it has none.
An order the market would not fill (a BUY limit below the market, a SELL limit above it)
and a MARKET order without any price are left alone, with the reason. Each order is filled
in its own transaction, so one refusal never undoes another order's fill. The fill's
external id is `SIM-<order id>`: running it again never fills an order twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal

from tradeops.auth.principal import Principal
from tradeops.db.pool import Database
from tradeops.db.uow import run_in_transaction
from tradeops.decimals import plain
from tradeops.errors import DomainError
from tradeops.executions import repository as repo
from tradeops.executions.schemas import ExecutionIn
from tradeops.executions.service import record_execution

VENUE = "SIMULATOR"


@dataclass(frozen=True)
class SimulatedFill:
    order_id: int
    client_id: str
    symbol: str
    side: str
    quantity: Decimal
    price: Decimal | None
    outcome: str  # the order's status after the fill, or why it was not filled


def fill_price(side: str, limit: Decimal | None, market: Decimal | None) -> Decimal | str:
    """The price to fill at, or why there is none."""
    if market is None:
        return limit if limit is not None else "no market price for a MARKET order"
    if limit is None or (market <= limit if side == "BUY" else market >= limit):
        return market
    return f"not marketable: the market {plain(market)} is through the limit {plain(limit)}"


async def simulate_fills(
    db: Database,
    principal: Principal,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[SimulatedFill]:
    """Fill every APPROVED or PARTIALLY_FILLED order in full, one transaction per order."""
    open_orders = await run_in_transaction(db, principal, lambda uow: uow.rows(repo.OPEN_ORDERS))
    return [await _fill(db, principal, order, clock()) for order in open_orders]


async def _fill(
    db: Database, principal: Principal, order: repo.OpenOrder, now: datetime
) -> SimulatedFill:
    price = fill_price(order.side, order.limit_price, order.market_price)
    result = SimulatedFill(
        order.id,
        order.client_id,
        order.symbol,
        order.side,
        order.remaining,
        price if isinstance(price, Decimal) else None,
        price if isinstance(price, str) else "",
    )
    if not isinstance(price, Decimal):
        return result
    fill = ExecutionIn(
        quantity=order.remaining,
        price=price,
        venue=VENUE,
        executed_at=now,
        external_id=f"SIM-{order.id}",
    )
    try:
        outcome = await run_in_transaction(
            db, principal, lambda uow: record_execution(uow, principal, order.id, fill)
        )
    except DomainError as refused:  # e.g. cancelled meanwhile: report it, fill the others
        return replace(result, outcome=refused.detail)
    return replace(result, outcome=outcome.fill.order.status)
