"""Named queries over positions; access filtering is written once, in `readable_positions`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, select, tuple_

from tradeops.audit.repository import append_audit
from tradeops.auth.principal import Principal
from tradeops.auth.repository import CallerRow
from tradeops.clients.models import Client
from tradeops.db.base import table_of
from tradeops.db.prepared import query
from tradeops.desks.models import Desk
from tradeops.instruments.models import Instrument
from tradeops.positions.models import Position

positions = table_of(Position)
clients = table_of(Client)
desks = table_of(Desk)
instruments = table_of(Instrument)


# The position's row, locked, whether it existed or not: a first fill inserts it flat, a
# later one finds it (ON CONFLICT takes the row lock and sees the latest committed state, so
# concurrent fills of one client and instrument queue here and none is lost).
@dataclass(frozen=True, slots=True)
class LockedPosition:
    quantity: Decimal
    cost_basis: Decimal
    realized_pnl: Decimal
    version: int


LOCK_POSITION = query(
    "INSERT INTO positions (desk_id, client_id, instrument_id)"
    " VALUES (:desk_id, :client_id, :instrument_id)"
    " ON CONFLICT (client_id, instrument_id) DO UPDATE SET version = positions.version"
    " RETURNING quantity, cost_basis, realized_pnl, version",
    LockedPosition,
)


@dataclass(frozen=True, slots=True)
class Stored:
    version: int


# The new state, computed from the locked row, with its audit event, in one round trip.
STORE_POSITION = query(
    "WITH before AS ("  # noqa: S608 - SQL from constants only
    " SELECT * FROM positions WHERE client_id = :client_id AND instrument_id = :instrument_id),"
    " changed AS ("
    " UPDATE positions SET quantity = :quantity, avg_cost = :avg_cost,"
    "  cost_basis = :cost_basis, realized_pnl = :realized_pnl, version = version + 1,"
    "  updated_at = now()"
    " WHERE client_id = :client_id AND instrument_id = :instrument_id AND version = :version"
    " RETURNING *),"
    " audit AS ("
    + append_audit(
        entity="'position'",
        entity_id="CAST(:position_key AS text)",
        before="to_jsonb(b)",
        after="to_jsonb(c) || jsonb_build_object('execution_id', CAST(:execution_id AS bigint))",
        action="'position.changed'",
        source="changed c CROSS JOIN before b",
    )
    + ") SELECT version FROM changed",
    Stored,
)


@dataclass(frozen=True, slots=True)
class BookedFill:
    """A fill as a position replays it: bought (+) or sold (-) at price, in booking order."""

    id: int
    side: str
    quantity: Decimal
    price: Decimal


# The client's fills of the instrument that stand (not busted), in booking order: execution
# ids are taken under the position's lock (executions/service locks it before recording),
# so id order is the order the fills were booked in. ix_orders_client_id_id and
# ix_executions_order_id_executed_at serve it.
STANDING_FILLS = query(
    "SELECT e.id, o.side, e.quantity, e.price FROM orders o"
    " JOIN executions e ON e.order_id = o.id"
    " WHERE o.client_id = :client_id AND o.instrument_id = :instrument_id AND e.kind = 'FILL'"
    " AND NOT EXISTS (SELECT FROM executions b WHERE b.reverses_execution_id = e.id)"
    " ORDER BY e.id",
    BookedFill,
)


@dataclass(frozen=True, slots=True)
class FillAsOf:
    """A fill booked by a time and not busted by then, with its position's names."""

    client_pk: int
    instrument_pk: int
    client_id: str
    desk: str
    symbol: str
    currency: str
    side: str
    quantity: Decimal
    price: Decimal
    recorded_at: datetime


# Every fill booked (recorded_at) by :as_of and not busted by then, of the principal's desks
# (row-level security enforces the same), by position and in booking order; each filter
# left NULL means any.
FILLS_AS_OF = query(
    "SELECT o.client_id AS client_pk, o.instrument_id AS instrument_pk,"
    " c.external_id AS client_id, d.code AS desk, i.symbol, i.currency, o.side,"
    " e.quantity, e.price, e.recorded_at"
    " FROM executions e JOIN orders o ON o.id = e.order_id"
    " JOIN clients c ON c.id = o.client_id JOIN desks d ON d.id = c.desk_id"
    " JOIN instruments i ON i.id = o.instrument_id"
    " WHERE e.kind = 'FILL' AND e.recorded_at <= :as_of"
    " AND NOT EXISTS (SELECT FROM executions b WHERE b.reverses_execution_id = e.id"
    "  AND b.recorded_at <= :as_of)"
    " AND (CAST(:all_desks AS boolean) OR o.desk_id = ANY(CAST(:desk_ids AS bigint[])))"
    " AND (CAST(:client_id AS text) IS NULL OR c.external_id = :client_id)"
    " AND (CAST(:symbol AS text) IS NULL OR i.symbol = :symbol)"
    " AND (CAST(:desk AS text) IS NULL OR d.code = :desk)"
    " ORDER BY o.client_id, o.instrument_id, e.id",
    FillAsOf,
)


@dataclass(frozen=True, slots=True)
class ListedPosition:
    """A position as the list shows it, with its key for the next page's cursor."""

    client_id: str
    desk: str
    symbol: str
    currency: str
    quantity: Decimal
    avg_cost: Decimal | None
    cost_basis: Decimal
    realized_pnl: Decimal
    version: int
    updated_at: datetime
    client_pk: int
    instrument_pk: int


def readable_positions(principal: Principal) -> Select[Any]:
    """Positions as the API lists them, of the desks the principal covers (row-level
    security enforces the same)."""
    statement = (
        select(
            clients.c.external_id.label("client_id"),
            desks.c.code.label("desk"),
            instruments.c.symbol,
            instruments.c.currency,
            positions.c.quantity,
            positions.c.avg_cost,
            positions.c.cost_basis,
            positions.c.realized_pnl,
            positions.c.version,
            positions.c.updated_at,
            positions.c.client_id.label("client_pk"),
            positions.c.instrument_id.label("instrument_pk"),
        )
        .select_from(positions)
        .join(clients, clients.c.id == positions.c.client_id)
        .join(desks, desks.c.id == positions.c.desk_id)
        .join(instruments, instruments.c.id == positions.c.instrument_id)
    )
    if not principal.all_desks:
        statement = statement.where(positions.c.desk_id.in_(principal.desk_ids))
    return statement


def filtered_positions(
    principal: Principal,
    *,
    client_id: str | None,
    symbol: str | None,
    desk: str | None,
    open_only: bool,
    after: tuple[int, int] | None,
    limit: int,
) -> Select[Any]:
    statement = readable_positions(principal)
    if client_id is not None:
        statement = statement.where(clients.c.external_id == client_id)
    if symbol is not None:
        statement = statement.where(instruments.c.symbol == symbol.upper())
    if desk is not None:
        statement = statement.where(desks.c.code == desk)
    if open_only:
        statement = statement.where(positions.c.quantity != 0)
    if after is not None:
        statement = statement.where(
            tuple_(positions.c.client_id, positions.c.instrument_id) > tuple_(*after)
        )
    return statement.order_by(positions.c.client_id, positions.c.instrument_id).limit(limit)


# GET /clients/{id}/portfolio: one statement that answers the whole JSON document, so the
# hot read costs no per-position work in Python (500 positions: bench/). The document is the
# SQL function tradeops_portfolio_document (migration 0019; 0022 writes it cheaper), which
# the one-statement read (tradeops_read_portfolio) calls too: each position valued at the
# latest price of its instrument, exact numeric arithmetic throughout, totals per currency
# (their market value and unrealized P&L null when an open position of that currency has no
# price, rather than a partial sum). NULL: no such client for this caller.
@dataclass(frozen=True, slots=True)
class Portfolio:
    document: str | None  # the JSON of schemas.Portfolio


PORTFOLIO = query(
    "SELECT tradeops_portfolio_document(:client_id, :all_desks, :desk_ids) AS document",
    Portfolio,
)


@dataclass(frozen=True, slots=True)
class PortfolioRead(CallerRow):
    """GET /clients/{id}/portfolio in one statement: who asked (the authenticating
    statement's row, answered as a composite value and made one here) and the document, if
    they may see the client. No row at all when the credentials name nobody."""

    document: str | None


READ_PORTFOLIO = query(
    "SELECT caller, document FROM tradeops_read_portfolio("
    ":prefix, :hash, :user_id, :email, :app_role, :request_id, :client_id)",
    PortfolioRead,
    alone=True,
)
