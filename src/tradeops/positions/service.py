"""Positions: kept up to date by each fill, listed, and valued as a client's portfolio."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import groupby
from typing import Any

from tradeops.auth.authentication import principal_found
from tradeops.auth.key_usage import KeyUsage
from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.clients.service import ClientNotFound
from tradeops.db.uow import ConnectionSource, UnitOfWork, one_statement
from tradeops.pagination import decode_cursor, encode_cursor
from tradeops.positions import repository as repo
from tradeops.positions.accounting import FLAT, Holding, apply_fill, signed_quantity
from tradeops.positions.schemas import PositionOut, PositionPage


@dataclass(frozen=True)
class PositionKey:
    """Which position: a client's holding of an instrument, on the client's desk."""

    desk_id: int
    client_id: int
    instrument_id: int
    position_key: str  # how the audit trail names it: "<client>:<symbol>"


@dataclass(frozen=True)
class PositionFill:
    """A fill as it changes a position: bought (quantity > 0) or sold (< 0) at price."""

    position: PositionKey
    quantity: Decimal
    price: Decimal
    execution_id: int


async def lock_position(
    uow: UnitOfWork, principal: Principal, key: PositionKey
) -> repo.LockedPosition:
    """Lock the position (opening it flat if new) before its fill or bust is recorded, so
    executions of one client and instrument are numbered in the order they are booked, and
    concurrent ones apply one after the other. The caller holds the order's lock."""
    authorize(principal, Action.RECORD_EXECUTION)
    row = await uow.row(
        repo.LOCK_POSITION,
        {"client_id": key.client_id, "instrument_id": key.instrument_id, "desk_id": key.desk_id},
    )
    assert row is not None  # an upsert always returns its row
    return row


async def book_fill(
    uow: UnitOfWork, principal: Principal, fill: PositionFill, locked: repo.LockedPosition
) -> Holding:
    """Apply a fill to its position (locked by `lock_position`), with its audit event."""
    authorize(principal, Action.RECORD_EXECUTION)
    before = Holding(locked.quantity, locked.cost_basis, locked.realized_pnl)
    after = apply_fill(before, fill.quantity, fill.price)
    await _store(uow, fill.position, after, locked, fill.execution_id)
    return after


async def rebuild_position(
    uow: UnitOfWork,
    principal: Principal,
    key: PositionKey,
    locked: repo.LockedPosition,
    bust_execution_id: int,
) -> Holding:
    """After a bust: the position as if the busted fill had never happened, by replaying
    the fills that stand, from flat, in booking order. Exact by construction (the same
    `apply_fill` steps, the same rounding), where an inverse formula could not be: a fill
    that closed part of the position realized P&L at the average cost of its time."""
    authorize(principal, Action.RECORD_EXECUTION)
    fills = await uow.rows(
        repo.STANDING_FILLS, {"client_id": key.client_id, "instrument_id": key.instrument_id}
    )
    holding = FLAT
    for fill in fills:
        holding = apply_fill(holding, signed_quantity(fill.side, fill.quantity), fill.price)
    await _store(uow, key, holding, locked, bust_execution_id)
    return holding


async def _store(
    uow: UnitOfWork,
    key: PositionKey,
    holding: Holding,
    locked: repo.LockedPosition,
    execution_id: int,
) -> None:
    stored = await uow.row(
        repo.STORE_POSITION,
        {
            "client_id": key.client_id,
            "instrument_id": key.instrument_id,
            "quantity": holding.quantity,
            "avg_cost": holding.avg_cost,
            "cost_basis": holding.cost_basis,
            "realized_pnl": holding.realized_pnl,
            "version": locked.version,
            "position_key": key.position_key,
            "execution_id": execution_id,
        },
    )
    if stored is None:  # pragma: no cover - the row is locked; kept as a guard
        raise RuntimeError(f"position {key.position_key} changed while locked")


async def positions_as_of(
    uow: UnitOfWork,
    principal: Principal,
    as_of: datetime,
    *,
    client_id: str | None = None,
    symbol: str | None = None,
    desk: str | None = None,
    open_only: bool = False,
) -> PositionPage:
    """Positions as they stood at booking time `as_of`: replayed from the fills booked by
    then that no bust booked by then took back (correct for any time, and slower than the
    stored positions: every fill of the principal's desks is read). One page, all of them."""
    authorize(principal, Action.READ_POSITIONS)
    fills = await uow.rows(
        repo.FILLS_AS_OF,
        {
            "as_of": as_of,
            "all_desks": principal.all_desks,
            "desk_ids": list(principal.desk_ids),
            "client_id": client_id,
            "symbol": None if symbol is None else symbol.upper(),
            "desk": desk,
        },
    )
    items: list[PositionOut] = []
    for _, group in groupby(fills, key=lambda f: (f.client_pk, f.instrument_pk)):
        booked = list(group)
        holding = FLAT
        for fill in booked:
            holding = apply_fill(holding, signed_quantity(fill.side, fill.quantity), fill.price)
        if open_only and holding.quantity == 0:
            continue
        first = booked[0]
        items.append(
            PositionOut(
                client_id=first.client_id,
                desk=first.desk,
                symbol=first.symbol,
                currency=first.currency,
                quantity=holding.quantity,
                avg_cost=holding.avg_cost,
                cost_basis=holding.cost_basis,
                realized_pnl=holding.realized_pnl,
                version=len(booked),
                updated_at=booked[-1].recorded_at,
            )
        )
    return PositionPage(items=items, next_cursor=None)


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
    return shown_portfolio(principal, None if portfolio is None else portfolio.document, client_id)


async def read_portfolio(
    source: ConnectionSource, credential: Mapping[str, Any], client_id: str, key_usage: KeyUsage
) -> tuple[Principal, str | None]:
    """GET /clients/{id}/portfolio in one round trip: the caller the credential names (401 if
    none) and the document if they can see the client; decided with shown_portfolio."""
    read = await one_statement(source, repo.READ_PORTFOLIO, {**credential, "client_id": client_id})
    principal = principal_found(None if read is None else read.caller, key_usage)
    return principal, None if read is None else read.document


def shown_portfolio(principal: Principal, document: str | None, client_id: str) -> str:
    """The portfolio read for `principal`, if they may read positions and it was found."""
    authorize(principal, Action.READ_POSITIONS)
    if document is None:
        raise ClientNotFound(f"No client {client_id}.")
    return document
