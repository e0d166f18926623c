"""Positions: kept up to date by each fill, listed, and valued as a client's portfolio."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.clients.service import ClientNotFound
from tradeops.db.uow import UnitOfWork
from tradeops.pagination import decode_cursor, encode_cursor
from tradeops.positions import repository as repo
from tradeops.positions.accounting import Holding, apply_fill
from tradeops.positions.schemas import PositionOut, PositionPage


@dataclass(frozen=True)
class PositionFill:
    """A fill as it changes a position: bought (quantity > 0) or sold (< 0) at price."""

    desk_id: int
    client_id: int
    instrument_id: int
    position_key: str  # how the audit trail names it: "<client>:<symbol>"
    quantity: Decimal
    price: Decimal
    execution_id: int


async def book_fill(uow: UnitOfWork, principal: Principal, fill: PositionFill) -> Holding:
    """Apply a fill to its position in the caller's transaction, with its audit event.

    The caller holds the order's lock; the position's row is locked here before it is read,
    so concurrent fills of the same client and instrument apply one after the other."""
    authorize(principal, Action.RECORD_EXECUTION)
    key = {"client_id": fill.client_id, "instrument_id": fill.instrument_id}
    row = await uow.row(repo.LOCK_POSITION, {**key, "desk_id": fill.desk_id})
    assert row is not None  # an upsert always returns its row
    before = Holding(row.quantity, row.cost_basis, row.realized_pnl)
    after = apply_fill(before, fill.quantity, fill.price)
    stored = await uow.row(
        repo.STORE_POSITION,
        {
            **key,
            "quantity": after.quantity,
            "avg_cost": after.avg_cost,
            "cost_basis": after.cost_basis,
            "realized_pnl": after.realized_pnl,
            "version": row.version,
            "position_key": fill.position_key,
            "execution_id": fill.execution_id,
        },
    )
    if stored is None:  # pragma: no cover - the row is locked; kept as a guard
        raise RuntimeError(f"position {fill.position_key} changed while locked")
    return after


def _position_after(cursor: str | None) -> tuple[int, int] | None:
    """A positions cursor: the (client, instrument) key of the last position shown."""
    key = decode_cursor(cursor, keys=2)
    return None if key is None else (key[0], key[1])


async def list_positions(
    uow: UnitOfWork,
    principal: Principal,
    *,
    limit: int,
    after: str | None = None,
    client_id: str | None = None,
    symbol: str | None = None,
    desk: str | None = None,
    open_only: bool = False,
) -> PositionPage:
    """Positions of the principal's desks by client and instrument, one page at a time."""
    authorize(principal, Action.READ_POSITIONS)
    statement = repo.filtered_positions(
        principal,
        client_id=client_id,
        symbol=symbol,
        desk=desk,
        open_only=open_only,
        after=_position_after(after),
        limit=limit + 1,
    )
    rows = await uow.rows_of(statement, repo.ListedPosition)
    items = [PositionOut.model_validate(r, from_attributes=True) for r in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    next_cursor = encode_cursor(last.client_pk, last.instrument_pk) if last else None
    return PositionPage(items=items, next_cursor=next_cursor)


async def portfolio_json(uow: UnitOfWork, principal: Principal, client_id: str) -> str:
    """A client's portfolio as the JSON document of `schemas.Portfolio`, built by PostgreSQL
    in one statement (so a large portfolio costs one round trip and no work per position
    here). A client of a desk the principal does not cover is not found."""
    authorize(principal, Action.READ_POSITIONS)
    portfolio = await uow.row(
        repo.PORTFOLIO,
        {
            "client_id": client_id,
            "all_desks": principal.all_desks,
            "desk_ids": list(principal.desk_ids),
        },
    )
    if portfolio is None:
        raise ClientNotFound(f"No client {client_id}.")
    return portfolio.document
