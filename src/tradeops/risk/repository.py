"""The risk module's SQL: limits, the facts a check reads, and the check's result (an order
change, built by orders/repository like every other)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from tradeops.db.prepared import Id, query
from tradeops.orders.repository import Changed, locking, order_change, updating
from tradeops.orders.states import OrderStatus, RiskStatus, Side
from tradeops.risk.schemas import RiskLimitOut

LIMITS = (
    "SELECT d.code AS desk, c.external_id AS client_id, r.max_order_notional, r.max_position,"
    " r.fat_finger_pct, r.updated_by, r.updated_at"
    " FROM risk_limits r JOIN desks d ON d.id = r.desk_id"
    " LEFT JOIN clients c ON c.id = r.client_id"
)
LIST_LIMITS = query(
    LIMITS + " WHERE (CAST(:desk AS text) IS NULL OR d.code = :desk)"
    " AND (CAST(:client_id AS text) IS NULL OR c.external_id = :client_id)"
    " ORDER BY d.code, c.external_id NULLS FIRST",
    RiskLimitOut,
)
LIMIT_BY_ID = query(LIMITS + " WHERE r.id = :id", RiskLimitOut)


@dataclass(frozen=True, slots=True)
class Holder:
    """Whose limits: a desk's (client_id None) or a client's."""

    desk_id: int
    client_id: int | None


DESK_BY_CODE = query(
    "SELECT id AS desk_id, NULL::bigint AS client_id FROM desks WHERE code = :code", Holder
)
CLIENT_BY_EXTERNAL_ID = query(
    "SELECT desk_id, id AS client_id FROM clients WHERE external_id = :external_id", Holder
)


@dataclass(frozen=True, slots=True)
class LimitRow:
    """A risk_limits row as stored (what the audit event keeps before and after)."""

    id: int
    desk_id: int
    client_id: int | None
    max_order_notional: Decimal | None
    max_position: Decimal | None
    fat_finger_pct: Decimal | None
    updated_by: int
    updated_at: datetime


_LIMIT_ROW = (
    "id, desk_id, client_id, max_order_notional, max_position, fat_finger_pct, updated_by,"
    " updated_at"
)
CURRENT_LIMIT = query(
    f"SELECT {_LIMIT_ROW} FROM risk_limits WHERE desk_id = :desk_id"  # noqa: S608 - constants
    " AND client_id IS NOT DISTINCT FROM CAST(:client_id AS bigint) FOR UPDATE",
    LimitRow,
)
SET_LIMIT = query(
    "INSERT INTO risk_limits (desk_id, client_id, max_order_notional, max_position,"  # noqa: S608
    " fat_finger_pct, updated_by)"
    " VALUES (:desk_id, :client_id, :max_order_notional, :max_position, :fat_finger_pct,"
    "  :updated_by)"
    " ON CONFLICT (desk_id, client_id) DO UPDATE SET"
    " max_order_notional = EXCLUDED.max_order_notional, max_position = EXCLUDED.max_position,"
    " fat_finger_pct = EXCLUDED.fat_finger_pct, updated_by = EXCLUDED.updated_by,"
    " updated_at = now()"
    f" RETURNING {_LIMIT_ROW}",
    LimitRow,
)


@dataclass(frozen=True, slots=True)
class RiskFactsRow:
    """Everything the rules need about one order, as read under its lock."""

    id: int
    status: OrderStatus
    risk_status: RiskStatus
    version: int
    side: Side
    quantity: Decimal
    price: Decimal | None
    currency: str
    symbol: str
    restricted: bool
    last_price: Decimal | None
    position: Decimal
    working: Decimal
    desk_max_order_notional: Decimal | None
    desk_max_position: Decimal | None
    desk_fat_finger_pct: Decimal | None
    client_max_order_notional: Decimal | None
    client_max_position: Decimal | None
    client_fat_finger_pct: Decimal | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", OrderStatus(self.status))
        object.__setattr__(self, "risk_status", RiskStatus(self.risk_status))
        object.__setattr__(self, "side", Side(self.side))


# Everything the rules need about one order, the order row locked so the result is written
# against the version that was checked.
RISK_FACTS = query(
    locking(
        "o.id, o.status, o.risk_status, o.version, o.side, o.quantity, o.price, o.currency,"
        " i.symbol, i.restricted,"
        " (SELECT l.price FROM latest_prices l WHERE l.instrument_id = o.instrument_id)"
        " AS last_price,"
        " COALESCE(p.quantity, 0) AS position,"
        # Approved orders not yet filled will move the position too: count their open quantity.
        " (SELECT COALESCE(sum(CASE w.side WHEN 'BUY' THEN 1 ELSE -1 END"
        "   * (w.quantity - w.filled_quantity)), 0) FROM orders w"
        "  WHERE w.client_id = o.client_id AND w.instrument_id = o.instrument_id"
        "  AND w.status IN ('APPROVED', 'PARTIALLY_FILLED') AND w.id <> o.id) AS working,"
        " d.max_order_notional AS desk_max_order_notional, d.max_position AS desk_max_position,"
        " d.fat_finger_pct AS desk_fat_finger_pct,"
        " c.max_order_notional AS client_max_order_notional,"
        " c.max_position AS client_max_position, c.fat_finger_pct AS client_fat_finger_pct",
        "JOIN instruments i ON i.id = o.instrument_id"
        " LEFT JOIN risk_limits d ON d.desk_id = o.desk_id AND d.client_id IS NULL"
        " LEFT JOIN risk_limits c ON c.client_id = o.client_id"
        " LEFT JOIN positions p ON p.client_id = o.client_id"
        " AND p.instrument_id = o.instrument_id",
    ),
    RiskFactsRow,
)

# The check's outcome, as an order change (history and audit event with it, one
# statement); only while the order still awaits its check, so a rerun changes nothing. The
# job acts as the system but names the check as the actor.
RECORD_RESULT = query(
    order_change(
        updating(
            "risk_status = :risk_status, risk_reasons = CAST(:reasons AS jsonb)",
            "risk_status = 'PENDING'",
        ),
        actor="CAST(:actor AS text)",
    ),
    Changed,
)

# Orders still awaiting their check a while after they were submitted, oldest first (the
# open statuses only: check_order skips every other). Reads through row-level security as
# the caller, so a sweep run as the system sees every desk. ix_orders_status_id serves it.
AWAITING_CHECK = query(
    "SELECT id FROM orders WHERE status IN ('PENDING', 'REVIEWED') AND risk_status = 'PENDING'"
    " AND created_at < now() - make_interval(secs => :older_than_seconds)"
    " ORDER BY id LIMIT :limit",
    Id,
)
