"""Named queries over executions; the order a fill changes is written by orders/repository."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from tradeops.audit.repository import append_audit
from tradeops.auth.repository import CallerRow
from tradeops.db.prepared import as_row, query, written_into
from tradeops.executions.schemas import ExecutionOut
from tradeops.orders.repository import locking, locking_in_function, order_change, updating
from tradeops.orders.states import OrderStatus, Side
from tradeops.positions.repository import LOCK_POSITION, STORE_POSITION


@dataclass(frozen=True, slots=True)
class FillOrder:
    """The order to fill, as locked: what the fill rules and the position need."""

    id: int
    desk_id: int
    client_id: int
    instrument_id: int
    side: Side
    order_type: str
    limit_price: Decimal | None
    quantity: Decimal
    filled_quantity: Decimal
    avg_fill_price: Decimal | None
    status: OrderStatus
    version: int
    client_external_id: str
    symbol: str
    lot_size: Decimal

    def __post_init__(self) -> None:
        object.__setattr__(self, "side", Side(self.side))
        object.__setattr__(self, "status", OrderStatus(self.status))


# The order to fill, locked first: fills of one order queue here, and everything after
# (the resent-fill check, the position) is read under this lock.
LOCK_ORDER = query(
    locking(
        "o.id, o.desk_id, o.client_id, o.instrument_id, o.side, o.order_type,"
        " o.price AS limit_price, o.quantity, o.filled_quantity, o.avg_fill_price, o.status,"
        " o.version, c.external_id AS client_external_id, i.symbol, i.lot_size",
        "JOIN clients c ON c.id = o.client_id JOIN instruments i ON i.id = o.instrument_id",
    ),
    FillOrder,
)

_EXECUTION_COLUMNS = (
    "e.id, e.order_id, e.external_id, e.quantity, e.price, e.venue, e.executed_at,"
    " u.email AS recorded_by, e.recorded_at"
)
# As the API lists them: a bust names the fill it reverses, a busted fill its bust.
_LISTED_COLUMNS = (
    _EXECUTION_COLUMNS + ", e.kind, e.reverses_execution_id, e.reason,"  # noqa: S608
    " (SELECT b.id FROM executions b WHERE b.reverses_execution_id = e.id) AS busted_by"
)
# The rest of what a statement that records an execution returns: its order's new fill state
# (from the new execution and the changed order).
_ORDER_NOW = (
    "c.status AS order_status, c.filled_quantity AS order_filled_quantity,"
    " c.avg_fill_price AS order_avg_fill_price, c.version AS order_version"
    " FROM new_execution e JOIN changed c ON c.id = e.order_id"
    " JOIN users u ON u.id = e.recorded_by"
)


@dataclass(frozen=True, slots=True)
class FillContext:
    """What the order's fills cost so far, and the execution already recorded under the
    fill's external id (all None: none)."""

    filled_notional: Decimal
    id: int | None
    order_id: int | None
    external_id: str | None
    quantity: Decimal | None
    price: Decimal | None
    venue: str | None
    executed_at: datetime | None
    recorded_by: str | None
    recorded_at: datetime | None


# Read after the lock (a new statement, so it sees every fill committed before it): the
# execution already recorded under this external id, if any, and what the order's standing
# fills cost so far, for its average fill price (neither a busted fill nor its bust counts).
FILL_CONTEXT = query(
    "SELECT (SELECT COALESCE(sum(f.quantity * f.price), 0) FROM executions f"  # noqa: S608 - constants only
    "  WHERE f.order_id = :order_id AND f.kind = 'FILL'"
    "  AND NOT EXISTS (SELECT FROM executions b WHERE b.reverses_execution_id = f.id))"
    "  AS filled_notional,"
    f" {_EXECUTION_COLUMNS}"
    " FROM (SELECT 1) AS one"
    " LEFT JOIN executions e ON e.venue = :venue AND e.external_id = :external_id"
    " LEFT JOIN users u ON u.id = e.recorded_by",
    FillContext,
)


@dataclass(frozen=True, slots=True)
class ExecutionColumns:
    """An execution as _EXECUTION_COLUMNS reads it."""

    id: int
    order_id: int
    external_id: str
    quantity: Decimal
    price: Decimal
    venue: str
    executed_at: datetime
    recorded_by: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class RecordedExecution(ExecutionColumns):
    """A fill just recorded, and its order's new fill state."""

    order_status: OrderStatus
    order_filled_quantity: Decimal
    order_avg_fill_price: Decimal
    order_version: int


# The fill and its audit event, then the order's change (new state, history event with
# the execution's id, audit event), in one round trip. A fill whose external id a
# concurrent fill of another order took meanwhile inserts nothing, changes nothing and
# returns no row.
RECORD_FILL = query(
    order_change(
        updating(
            "filled_quantity = filled_quantity + :quantity, avg_fill_price = :avg_fill_price,"
            " status = :event_type",
            "version = :version AND EXISTS (SELECT FROM new_execution)",
        ),
        first="new_execution AS ("  # noqa: S608 - SQL from constants only
        " INSERT INTO executions (order_id, desk_id, quantity, price, venue, executed_at,"
        "  external_id, recorded_by, recorded_by_key_id)"
        " VALUES (:id, :desk_id, :quantity, :price, :venue, :executed_at, :external_id,"
        "  :recorded_by, :recorded_by_key_id)"
        " ON CONFLICT (venue, external_id) DO NOTHING RETURNING *),"
        " audit_execution AS ("
        + append_audit(
            entity="'execution'",
            entity_id="e.id::text",
            after="to_jsonb(e)",
            action="'execution.recorded'",
            source="new_execution e",
        )
        + ")",
        event_payload="CAST(:payload AS jsonb) || jsonb_build_object('execution_id', e.id)",
        event_source="changed c CROSS JOIN new_execution e",
        returning=f"SELECT {_EXECUTION_COLUMNS}, {_ORDER_NOW}",
    ),
    RecordedExecution,
)

EXECUTIONS_OF_ORDER = query(
    f"SELECT {_LISTED_COLUMNS} FROM executions e"  # noqa: S608 - constants only
    " JOIN users u ON u.id = e.recorded_by"
    " WHERE e.order_id = :order_id ORDER BY e.executed_at, e.id",
    ExecutionOut,
)


@dataclass(frozen=True, slots=True)
class BustTarget:
    """The execution a bust names, read under the order's lock; what the order's remaining
    fills (all but it, and those already busted) come to."""

    id: int
    kind: str
    quantity: Decimal
    price: Decimal
    venue: str
    executed_at: datetime
    external_id: str
    busted_by: int | None
    remaining_quantity: Decimal
    remaining_notional: Decimal


BUST_TARGET = query(
    "SELECT e.id, e.kind, e.quantity, e.price, e.venue, e.executed_at, e.external_id,"
    " (SELECT b.id FROM executions b WHERE b.reverses_execution_id = e.id) AS busted_by,"
    " COALESCE(r.quantity, 0) AS remaining_quantity, COALESCE(r.notional, 0)"
    "  AS remaining_notional"
    " FROM executions e"
    " LEFT JOIN LATERAL (SELECT sum(f.quantity) AS quantity, sum(f.quantity * f.price)"
    "  AS notional FROM executions f WHERE f.order_id = e.order_id AND f.kind = 'FILL'"
    "  AND f.id <> e.id"
    "  AND NOT EXISTS (SELECT FROM executions b WHERE b.reverses_execution_id = f.id)) r"
    "  ON true"
    " WHERE e.id = :execution_id AND e.order_id = :order_id",
    BustTarget,
)


@dataclass(frozen=True, slots=True)
class RecordedBust(ExecutionColumns):
    """A bust just recorded (the reversing execution), and its order's new fill state."""

    kind: str
    reverses_execution_id: int
    reason: str
    busted_by: None
    order_status: OrderStatus
    order_filled_quantity: Decimal
    order_avg_fill_price: Decimal | None
    order_version: int


# The reversing execution and its audit event, then the order's change (its fill state as
# without the busted fill, history event FILL_BUSTED naming both executions, audit event),
# one round trip. Never an UPDATE or DELETE of the busted fill. A bust recorded meanwhile
# (the unique reverses_execution_id) fails the statement instead.
RECORD_BUST = query(
    order_change(
        updating(
            "filled_quantity = :filled_quantity, avg_fill_price = :avg_fill_price,"
            " status = :status",
            "version = :version AND EXISTS (SELECT FROM new_execution)",
        ),
        first="new_execution AS ("  # noqa: S608 - SQL from constants only
        " INSERT INTO executions (order_id, desk_id, quantity, price, venue, executed_at,"
        "  external_id, recorded_by, recorded_by_key_id, kind, reverses_execution_id, reason)"
        " VALUES (:id, :desk_id, :quantity, :price, :venue, :executed_at, :external_id,"
        "  :recorded_by, :recorded_by_key_id, 'BUST', :reverses_execution_id, :reason)"
        " RETURNING *),"
        " audit_execution AS ("
        + append_audit(
            entity="'execution'",
            entity_id="e.id::text",
            after="to_jsonb(e)",
            action="'execution.busted'",
            source="new_execution e",
        )
        + ")",
        event_payload="CAST(:payload AS jsonb) || jsonb_build_object('bust_execution_id', e.id)",
        event_source="changed c CROSS JOIN new_execution e",
        returning=f"SELECT {_EXECUTION_COLUMNS}, e.kind, e.reverses_execution_id, e.reason,"
        f" NULL AS busted_by, {_ORDER_NOW}",
    ),
    RecordedBust,
)


@dataclass(frozen=True, slots=True)
class OpenOrder:
    """An order the simulator fills: what is left of it, and the market's latest price."""

    id: int
    client_id: str
    symbol: str
    side: Side
    limit_price: Decimal | None
    remaining: Decimal
    market_price: Decimal | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "side", Side(self.side))


OPEN_ORDERS = query(
    "SELECT o.id, c.external_id AS client_id, i.symbol, o.side, o.price AS limit_price,"
    " o.quantity - o.filled_quantity AS remaining, s.price AS market_price"
    " FROM orders o JOIN clients c ON c.id = o.client_id"
    " JOIN instruments i ON i.id = o.instrument_id"
    " LEFT JOIN latest_prices s ON s.instrument_id = o.instrument_id"
    " WHERE o.status IN ('APPROVED', 'PARTIALLY_FILLED') ORDER BY o.id",
    OpenOrder,
)


@dataclass(frozen=True, slots=True)
class FillRecorded(RecordedExecution):
    """A fill recorded in one statement: as RECORD_FILL answers it, and its order's quantity."""

    order_quantity: Decimal


@dataclass(frozen=True, slots=True)
class FilledBy(CallerRow):
    """POST /orders/{id}/executions in one statement: who asked, and the fill, None when
    nothing was written (a caller who may not, an order not found or a rule refuses, an
    external id already known). No row at all when the credentials name nobody."""

    recorded: FillRecorded | None

    def __post_init__(self) -> None:
        CallerRow.__post_init__(self)
        object.__setattr__(self, "recorded", as_row(self.recorded, FillRecorded))


# A fill in one round trip (issue 15, migration 0039): the function authenticates, and for a
# caller of a role in :roles whose key, if any, has :scope (auth.permissions' rule for
# recording fills) locks the order, and records the fill and books the position only if no
# rule refuses it; its statements are this module's and positions.repository's
# (record_fill_function). :payload is the order event's, but for the filled quantity.
RECORD_FILL_IN_ONE_STATEMENT = query(
    "SELECT caller, recorded FROM tradeops_record_fill("
    ":prefix, :hash, :user_id, :email, :app_role, :request_id, :roles, :scope,"
    " :lock_timeout_ms, :order_id, :quantity, :price, :venue, :executed_at, :external_id,"
    " :payload)",
    FilledBy,
    alone=True,
)

# What the statements below are given in tradeops_record_fill: the order it locked
# (`locked`, LOCK_ORDER's columns), the fill's arguments (`in_` and the name), the caller
# (`who`), what the function worked out (`fill_*`), the position it locked (`held`, as
# LOCK_POSITION returns it) and the position after the fill (`held_*`).
_FILL_VALUES = {
    "id": "in_order_id",
    "desk_id": "locked.desk_id",
    "recorded_by": "who.user_id",
    "recorded_by_key_id": "who.key_id",
    "avg_fill_price": "fill_avg_price",
    "event_type": "fill_status",
    "version": "locked.version",
    "payload": "fill_payload",
    "action": "fill_action",
}
_POSITION_VALUES = {
    "desk_id": "locked.desk_id",
    "client_id": "locked.client_id",
    "instrument_id": "locked.instrument_id",
    "quantity": "held_quantity",
    "avg_cost": "held_avg_cost",
    "cost_basis": "held_cost_basis",
    "realized_pnl": "held_realized_pnl",
    "version": "held.version",
    "position_key": "held_key",
    "execution_id": "fill_row.id",
}


def record_fill_function() -> tuple[str, str, str, str, str]:
    """The statements of a fill as tradeops_record_fill runs them (migration 0039), in
    order: LOCK_ORDER (on the caller's desks), FILL_CONTEXT, LOCK_POSITION, RECORD_FILL
    and STORE_POSITION, each read into the function's variables. The installed function
    holds exactly these (tests/integration/test_one_statement_fills.py): a change to any
    comes with a migration."""
    lock = locking_in_function(LOCK_ORDER)
    context = written_into(
        FILL_CONTEXT.prepared.written_with(lambda name: f"in_{name}"),
        " FROM (SELECT 1) AS one",
        " INTO known FROM (SELECT 1) AS one",
    )
    position = LOCK_POSITION.prepared.written_with(lambda name: _POSITION_VALUES[name])
    record = written_into(
        RECORD_FILL.prepared.written_with(lambda name: _FILL_VALUES.get(name, f"in_{name}")),
        " FROM new_execution e JOIN changed c",
        " INTO fill_row FROM new_execution e JOIN changed c",
    )
    store = written_into(
        STORE_POSITION.prepared.written_with(lambda name: _POSITION_VALUES[name]),
        " SELECT version FROM changed",
        " SELECT version INTO held_version FROM changed",
    )
    return lock, context, position + " INTO held", record, store
