"""Named queries over orders; access filtering is written once, in `readable_orders`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Select, any_, bindparam, or_, select, text
from sqlalchemy.dialects.postgresql import ARRAY

from tradeops.auth.models import User
from tradeops.auth.principal import Principal
from tradeops.clients.models import Client
from tradeops.db.base import table_of
from tradeops.db.prepared import prepare
from tradeops.desks.models import Desk
from tradeops.instruments.models import Instrument
from tradeops.orders.models import Order, OrderEvent

orders = table_of(Order)
order_events = table_of(OrderEvent)
clients = table_of(Client)
instruments = table_of(Instrument)
desks = table_of(Desk)
users = table_of(User)
creator = users.alias("creator")
reviewer = users.alias("reviewer")
approver = users.alias("approver")

# Intake in one statement: find the client and instrument, insert the order only if every
# rule that needs their rows holds, append its first history event and its audit event, and
# return the references either way, so a refusal can be explained field by field. A repeated
# client_order_id inserts nothing. The trigger on orders checks the same rules again.
SUBMIT_ORDER = prepare(
    text(
        "WITH refs AS ("
        " SELECT c.id AS client_pk, c.desk_id, c.status AS client_status, d.code AS desk,"
        "  i.id AS instrument_pk, i.currency, i.lot_size, i.tick_size,"
        "  i.active AS instrument_active"
        " FROM (SELECT 1) AS one"
        " LEFT JOIN clients c ON c.external_id = :client_id"
        " LEFT JOIN desks d ON d.id = c.desk_id"
        " LEFT JOIN instruments i ON i.symbol = :symbol),"
        " new_order AS ("
        " INSERT INTO orders (desk_id, client_id, instrument_id, side, order_type, time_in_force,"
        "  quantity, price, currency, client_order_id, created_by, created_by_key_id)"
        " SELECT desk_id, client_pk, instrument_pk, CAST(:side AS text),"
        "  CAST(:order_type AS text), CAST(:time_in_force AS text), CAST(:quantity AS numeric),"
        "  CAST(:price AS numeric), currency, CAST(:client_order_id AS text),"
        "  CAST(:created_by AS bigint), CAST(:created_by_key_id AS bigint)"
        " FROM refs"
        " WHERE client_status = 'ACTIVE' AND instrument_active"
        "  AND (CAST(:all_desks AS boolean) OR desk_id = ANY(CAST(:desk_ids AS bigint[])))"
        "  AND mod(:quantity, lot_size) = 0"
        "  AND (:price IS NULL OR mod(:price, tick_size) = 0)"
        " ON CONFLICT (created_by, client_order_id) DO NOTHING RETURNING *),"
        " event AS ("
        " INSERT INTO order_events (order_id, desk_id, seq, type, actor, payload, at)"
        " SELECT id, desk_id, 1, 'CREATED', :actor, CAST(:event_payload AS jsonb), created_at"
        " FROM new_order),"
        " audit AS ("
        " INSERT INTO audit_events (stream, actor, api_key_id, request_id, action, entity,"
        "  entity_id, after)"
        " SELECT 'order:' || id, :actor, :created_by_key_id, :request_id, 'order.created', 'order',"
        "  id::text, to_jsonb(new_order) FROM new_order)"
        " SELECT refs.*, n.id, n.status, n.risk_status, n.risk_reasons, n.filled_quantity,"
        "  n.version, n.created_at, n.updated_at"
        " FROM refs LEFT JOIN new_order n ON true"
    )
)

# The columns of the new order that SUBMIT_ORDER returns beside the references.
CREATED_FIELDS = (
    "id",
    "status",
    "risk_status",
    "risk_reasons",
    "filled_quantity",
    "version",
    "created_at",
    "updated_at",
)

# What the maker-checker rules read of an order; locked when it is about to change.
_ORDER_FACTS = (
    "SELECT id, desk_id, status, version, created_by, risk_status, risk_reasons FROM orders"
    " WHERE id = :id"
)
ORDER_FACTS = text(_ORDER_FACTS)
LOCK_ORDER = text(_ORDER_FACTS + " FOR UPDATE")

# One conditional UPDATE (the row is already locked, the version re-checked) with its history
# event and audit event, in one round trip. The event's seq is the order's new version. The
# events' actor, key and request come from the transaction's context (migration 0011);
# the triggers of maker-checker check the decision again (approved_by, rejected_by).
TRANSITION = text(
    "WITH before AS (SELECT * FROM orders WHERE id = :id),"
    " changed AS ("
    " UPDATE orders SET status = :to_status, version = version + 1, updated_at = now(),"
    "  reviewed_by = COALESCE(:reviewed_by, reviewed_by),"
    "  approved_by = COALESCE(:approved_by, approved_by),"
    "  rejected_by = COALESCE(:rejected_by, rejected_by)"
    " WHERE id = :id AND version = :version AND status = :from_status RETURNING *),"
    " event AS ("
    " INSERT INTO order_events (order_id, desk_id, seq, type, payload)"
    " SELECT id, desk_id, version, :event_type, CAST(:payload AS jsonb) FROM changed),"
    " audit AS ("
    " INSERT INTO audit_events (stream, action, entity, entity_id, before, after)"
    " SELECT 'order:' || c.id, :action, 'order', c.id::text, to_jsonb(b), to_jsonb(c)"
    " FROM changed c CROSS JOIN before b)"
    " SELECT id, version FROM changed"
)

ORDER_EVENTS = text(
    "SELECT seq, type, actor, payload, at FROM order_events WHERE order_id = :id ORDER BY seq"
)

# The event stream (orders/stream.py), in (transaction_id, id) order after a position. An
# event is `settled` when its transaction is older than every transaction in flight on the
# server (pg_snapshot_xmin of the statement's own snapshot, cheap) or, when `:exact`, every
# one in flight that may write here (order_events_horizon(), migration 0015, which reads
# pg_locks): nothing can commit before a settled event any more. The desk condition repeats
# row-level security, as for every read of orders.
EVENTS_AFTER = prepare(
    "SELECT e.id, e.transaction_id, e.order_id, d.code AS desk, e.seq AS version, e.type,"
    " e.actor, e.payload, e.at, e.transaction_id < h.horizon AS settled"
    " FROM (SELECT CASE WHEN CAST(:exact AS boolean) THEN order_events_horizon()"
    "  ELSE pg_snapshot_xmin(pg_current_snapshot())::text::bigint END AS horizon) AS h"
    " JOIN order_events e ON (e.transaction_id, e.id)"
    "  > (CAST(:after_transaction AS bigint), CAST(:after_id AS bigint))"
    " JOIN desks d ON d.id = e.desk_id"
    " WHERE (CAST(:all_desks AS boolean) OR e.desk_id = ANY(CAST(:desk_ids AS bigint[])))"
    " ORDER BY e.transaction_id, e.id LIMIT CAST(:limit AS integer)"
)

# Where a stream that starts now begins: at the oldest transaction in flight that may write.
STREAM_HORIZON = prepare("SELECT order_events_horizon()")

# The position of an event a client saw (Last-Event-ID), if it may see it.
EVENT_POSITION = prepare(
    "SELECT transaction_id FROM order_events WHERE id = CAST(:id AS bigint)"
    " AND (CAST(:all_desks AS boolean) OR desk_id = ANY(CAST(:desk_ids AS bigint[])))"
)


@dataclass(frozen=True, slots=True)
class StreamedEvent:
    """An order event as the stream sends it; `version` is the order's version after it."""

    id: int
    transaction_id: int
    order_id: int
    desk: str
    version: int
    type: str
    actor: str
    payload: dict[str, Any]
    at: datetime
    settled: bool


EXISTING_CLIENT_ORDER = text(
    "SELECT id FROM orders WHERE created_by = :created_by AND client_order_id = :client_order_id"
)


def order_view() -> Select[Any]:
    """Orders as the API shows them: external ids and symbols instead of keys."""
    return (
        select(
            orders.c.id,
            orders.c.status,
            orders.c.risk_status,
            orders.c.risk_reasons,
            clients.c.external_id.label("client_id"),
            desks.c.code.label("desk"),
            instruments.c.symbol,
            orders.c.side,
            orders.c.order_type,
            orders.c.time_in_force,
            orders.c.quantity,
            orders.c.price,
            orders.c.currency,
            orders.c.filled_quantity,
            orders.c.avg_fill_price,
            orders.c.client_order_id,
            creator.c.email.label("created_by"),
            reviewer.c.email.label("reviewed_by"),
            approver.c.email.label("approved_by"),
            orders.c.version,
            orders.c.created_at,
            orders.c.updated_at,
        )
        .select_from(orders)
        .join(clients, clients.c.id == orders.c.client_id)
        .join(desks, desks.c.id == orders.c.desk_id)
        .join(instruments, instruments.c.id == orders.c.instrument_id)
        .join(creator, creator.c.id == orders.c.created_by)
        .outerjoin(reviewer, reviewer.c.id == orders.c.reviewed_by)
        .outerjoin(approver, approver.c.id == orders.c.approved_by)
    )


# GET /orders/{id}: the hot read, rendered once. The desk condition repeats what row-level
# security enforces, so a principal's filter never depends on the database alone.
ORDER_BY_ID = prepare(
    order_view().where(
        orders.c.id == bindparam("id", type_=BigInteger),
        or_(
            bindparam("all_desks", type_=Boolean),
            orders.c.desk_id == any_(bindparam("desk_ids", type_=ARRAY(BigInteger))),
        ),
    )
)


def readable_orders(principal: Principal) -> Select[Any]:
    """The orders a principal may read: their desks' (row-level security enforces the same)."""
    statement = order_view()
    if not principal.all_desks:
        statement = statement.where(orders.c.desk_id.in_(principal.desk_ids))
    return statement


def filtered_orders(
    principal: Principal,
    *,
    status: str | None = None,
    statuses: Sequence[str] | None = None,
    risk_status: str | None = None,
    made_by: int | None = None,
    client_id: str | None = None,
    symbol: str | None = None,
    desk: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    after: int | None = None,
    limit: int,
) -> Select[Any]:
    statement = readable_orders(principal)
    if status is not None:
        statement = statement.where(orders.c.status == status)
    if statuses is not None:
        statement = statement.where(orders.c.status.in_(statuses))
    if risk_status is not None:
        statement = statement.where(orders.c.risk_status == risk_status)
    if made_by is not None:
        statement = statement.where(orders.c.created_by == made_by)
    if client_id is not None:
        statement = statement.where(clients.c.external_id == client_id)
    if symbol is not None:
        statement = statement.where(instruments.c.symbol == symbol.upper())
    if desk is not None:
        statement = statement.where(desks.c.code == desk)
    if created_from is not None:
        statement = statement.where(orders.c.created_at >= created_from)
    if created_to is not None:
        statement = statement.where(orders.c.created_at < created_to)
    if after is not None:
        statement = statement.where(orders.c.id < after)
    return statement.order_by(orders.c.id.desc()).limit(limit)
