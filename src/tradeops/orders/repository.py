"""Named queries over orders; access filtering is written once, in `readable_orders`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Boolean, Select, any_, bindparam, or_, select
from sqlalchemy.dialects.postgresql import ARRAY

from tradeops.audit.repository import append_audit
from tradeops.auth.models import User
from tradeops.auth.principal import Principal
from tradeops.clients.models import Client
from tradeops.db.base import table_of
from tradeops.db.prepared import Query, query
from tradeops.db.uow import UnitOfWork
from tradeops.desks.models import Desk
from tradeops.instruments.models import Instrument
from tradeops.orders.models import OPEN_STATUSES, Order, OrderEvent
from tradeops.orders.schemas import OrderFilters, OrderOut
from tradeops.orders.states import OrderStatus, RiskStatus

T = TypeVar("T")

orders = table_of(Order)
order_events = table_of(OrderEvent)
clients = table_of(Client)
instruments = table_of(Instrument)
desks = table_of(Desk)
users = table_of(User)
creator = users.alias("creator")
reviewer = users.alias("reviewer")
approver = users.alias("approver")


def order_change(
    change: str,
    *,
    before: bool | str = True,
    first: str = "",
    event_payload: str = "CAST(:payload AS jsonb)",
    event_source: str = "changed c",
    actor: str = "",
    returning: str = "SELECT id, version FROM changed",
) -> str:
    """The one way an order changes: `change` (an INSERT or a conditional UPDATE of orders,
    `RETURNING *`) with its history event (seq = the order's new version, type
    :event_type) and its audit event (:action, the order before and after), in one
    statement, so one round trip. `first` are CTEs the change reads (a fill's execution);
    `actor` names who acted where the transaction's context does not (the risk job).
    `before` as a string is the statement of the orders a batch changes (the expiry sweep),
    each audit event joined to its own order's state before."""
    ctes = [first] if first else []
    many = isinstance(before, str)
    if before:
        ctes.append(f"before AS ({before if many else 'SELECT * FROM orders WHERE id = :id'})")  # noqa: S608
    ctes.append(f"changed AS ({change})")
    event_actor = (", actor", f", {actor}") if actor else ("", "")
    ctes.append(
        f"event AS (INSERT INTO order_events (order_id, desk_id, seq, type{event_actor[0]},"  # noqa: S608 - SQL from this code only
        f" payload) SELECT c.id, c.desk_id, c.version, :event_type{event_actor[1]},"
        f" {event_payload} FROM {event_source})"
    )
    audit = append_audit(
        entity="'order'",
        entity_id="c.id::text",
        before="to_jsonb(b)" if before else "NULL",
        after="to_jsonb(c)",
        source=(
            "changed c JOIN before b ON b.id = c.id" if many else "changed c CROSS JOIN before b"
        )
        if before
        else "changed c",
        named=f"{actor}, tradeops_api_key_id(), tradeops_request_id()" if actor else "",
    )
    ctes.append(f"audit AS ({audit})")
    return "WITH " + ", ".join(ctes) + " " + returning


def updating(set_: str, where: str) -> str:
    """The change of an order that exists: `set_` besides the new version, only `where`
    (besides the order's id, :id) holds."""
    return (
        f"UPDATE orders SET {set_}, version = version + 1, updated_at = now()"  # noqa: S608
        f" WHERE id = :id AND {where} RETURNING *"
    )


@dataclass(frozen=True, slots=True)
class Submitted:
    """What intake returns: the client and instrument it found (None: not found), and the
    new order's columns (None: nothing was inserted)."""

    client_pk: int | None
    desk_id: int | None
    client_status: str | None
    desk: str | None
    instrument_pk: int | None
    currency: str | None
    lot_size: Decimal | None
    tick_size: Decimal | None
    instrument_active: bool | None
    id: int | None
    status: str | None
    risk_status: str | None
    risk_reasons: list[Any] | None
    filled_quantity: Decimal | None
    expire_at: datetime | None
    version: int | None
    created_at: datetime | None
    updated_at: datetime | None


# The columns of the new order that SUBMIT_ORDER returns beside the references.
CREATED_FIELDS = (
    "id",
    "status",
    "risk_status",
    "risk_reasons",
    "filled_quantity",
    "expire_at",
    "version",
    "created_at",
    "updated_at",
)

# Intake in one statement: find the client and instrument, insert the order only if every
# rule that needs their rows holds, append its first history event and its audit event, and
# return the references either way, so a refusal can be explained field by field. A repeated
# client_order_id inserts nothing. The trigger on orders checks the same rules again.
SUBMIT_ORDER = query(
    order_change(
        "INSERT INTO orders (desk_id, client_id, instrument_id, side, order_type, time_in_force,"
        " expire_at, quantity, price, currency, client_order_id, created_by, created_by_key_id)"
        " SELECT desk_id, client_pk, instrument_pk, CAST(:side AS text),"
        "  CAST(:order_type AS text), CAST(:time_in_force AS text),"
        "  CAST(:expire_at AS timestamptz), CAST(:quantity AS numeric),"
        "  CAST(:price AS numeric), currency, CAST(:client_order_id AS text),"
        "  CAST(:created_by AS bigint), CAST(:created_by_key_id AS bigint)"
        " FROM refs"
        " WHERE client_status = 'ACTIVE' AND instrument_active"
        "  AND (CAST(:all_desks AS boolean) OR desk_id = ANY(CAST(:desk_ids AS bigint[])))"
        "  AND mod(:quantity, lot_size) = 0"
        "  AND (:price IS NULL OR mod(:price, tick_size) = 0)"
        " ON CONFLICT (created_by, client_order_id) DO NOTHING RETURNING *",
        before=False,
        first="refs AS ("
        " SELECT c.id AS client_pk, c.desk_id, c.status AS client_status, d.code AS desk,"
        "  i.id AS instrument_pk, i.currency, i.lot_size, i.tick_size,"
        "  i.active AS instrument_active"
        " FROM (SELECT 1) AS one"
        " LEFT JOIN clients c ON c.external_id = :client_id"
        " LEFT JOIN desks d ON d.id = c.desk_id"
        " LEFT JOIN instruments i ON i.symbol = :symbol)",
        returning="SELECT refs.*, n.id, n.status, n.risk_status, n.risk_reasons,"
        " n.filled_quantity, n.expire_at, n.version, n.created_at, n.updated_at"
        " FROM refs LEFT JOIN changed n ON true",
    ),
    Submitted,
)


@dataclass(frozen=True, slots=True)
class OrderFacts:
    """What the maker-checker rules read of an order (`created_by`: the maker's user id)."""

    id: int
    desk_id: int
    status: OrderStatus
    version: int
    created_by: int
    risk_status: RiskStatus
    risk_reasons: list[dict[str, Any]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", OrderStatus(self.status))
        object.__setattr__(self, "risk_status", RiskStatus(self.risk_status))


_ORDER_FACTS = (
    "SELECT o.id, o.desk_id, o.status, o.version, o.created_by, o.risk_status, o.risk_reasons"
)
ORDER_FACTS = query(_ORDER_FACTS + " FROM orders o WHERE o.id = :id", OrderFacts)


def locking(columns: str, joins: str = "") -> str:
    """The statement that locks an order (`o`) and reads `columns` of it and of `joins`:
    whoever is about to change an order reads it this way, so its changes queue here."""
    return f"SELECT {columns} FROM orders o {joins} WHERE o.id = :id FOR UPDATE OF o"  # noqa: S608


async def lock_order(uow: UnitOfWork, locked: Query[T], order_id: int) -> T | None:
    """The one order lock: `locked` is a `locking` statement; None: no such order (or one
    row-level security hides)."""
    return await uow.row(locked, {"id": order_id})


LOCK_ORDER = query(locking(_ORDER_FACTS.removeprefix("SELECT ")), OrderFacts)


@dataclass(frozen=True, slots=True)
class Changed:
    id: int
    version: int


# A maker-checker transition: one conditional UPDATE (the row is already locked, the version
# re-checked); the triggers of maker-checker check the decision again.
TRANSITION = query(
    order_change(
        updating(
            "status = :to_status, reviewed_by = COALESCE(:reviewed_by, reviewed_by),"
            " approved_by = COALESCE(:approved_by, approved_by),"
            " rejected_by = COALESCE(:rejected_by, rejected_by)",
            "version = :version AND status = :from_status",
        )
    ),
    Changed,
)


OPEN = str(OPEN_STATUSES)  # "('PENDING', …)": not yet filled nor closed, as SQL

# The expiry sweep: up to :batch open orders whose time has passed, locked (skipping those
# another sweep or a decider holds: they are taken next time), moved to EXPIRED with their
# history event (type EXPIRED) and audit event each, in one statement named for :actor.
# ix_orders_expire_at_open serves the search; the triggers of 0017 check it again.
EXPIRE_DUE = query(
    order_change(
        f"UPDATE orders o SET status = 'EXPIRED', version = o.version + 1,"  # noqa: S608
        f" updated_at = now() FROM before b WHERE o.id = b.id AND o.status IN {OPEN}"
        " RETURNING o.*",
        before=f"SELECT * FROM orders WHERE status IN {OPEN} AND expire_at IS NOT NULL"  # noqa: S608
        " AND expire_at <= now() ORDER BY expire_at LIMIT :batch FOR UPDATE SKIP LOCKED",
        event_payload="jsonb_build_object('time_in_force', c.time_in_force, 'expire_at',"
        " c.expire_at, 'status_before', b.status)",
        event_source="changed c JOIN before b ON b.id = c.id",
        actor="CAST(:actor AS text)",
    ),
    Changed,
)


@dataclass(frozen=True, slots=True)
class OrderEventRow:
    seq: int
    type: str
    actor: str
    payload: dict[str, Any]
    at: datetime


ORDER_EVENTS = query(
    "SELECT seq, type, actor, payload, at FROM order_events WHERE order_id = :id ORDER BY seq",
    OrderEventRow,
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
            orders.c.expire_at,
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
ORDER_BY_ID = query(
    order_view().where(
        orders.c.id == bindparam("id", type_=BigInteger),
        or_(
            bindparam("all_desks", type_=Boolean),
            orders.c.desk_id == any_(bindparam("desk_ids", type_=ARRAY(BigInteger))),
        ),
    ),
    OrderOut,
)


# The order a submitter recorded under a client_order_id, as the API shows it: a retry's
# answer, or the order a conflicting one names (row-level security hides other desks').
ORDER_BY_CLIENT_ORDER_ID = query(
    order_view().where(
        orders.c.created_by == bindparam("created_by", type_=BigInteger),
        orders.c.client_order_id == bindparam("client_order_id"),
    ),
    OrderOut,
)


def readable_orders(principal: Principal) -> Select[Any]:
    """The orders a principal may read: their desks' (row-level security enforces the same)."""
    statement = order_view()
    if not principal.all_desks:
        statement = statement.where(orders.c.desk_id.in_(principal.desk_ids))
    return statement


def filtered_orders(
    principal: Principal, wanted: OrderFilters, *, after: int | None, limit: int
) -> Select[Any]:
    statement = readable_orders(principal)
    if wanted.status is not None:
        statement = statement.where(orders.c.status == wanted.status)
    if wanted.statuses is not None:
        statement = statement.where(orders.c.status.in_(wanted.statuses))
    if wanted.risk_status is not None:
        statement = statement.where(orders.c.risk_status == wanted.risk_status)
    if wanted.made_by is not None:
        statement = statement.where(orders.c.created_by == wanted.made_by)
    if wanted.client_id is not None:
        statement = statement.where(clients.c.external_id == wanted.client_id)
    if wanted.symbol is not None:
        statement = statement.where(instruments.c.symbol == wanted.symbol.upper())
    if wanted.desk is not None:
        statement = statement.where(desks.c.code == wanted.desk)
    if wanted.created_from is not None:
        statement = statement.where(orders.c.created_at >= wanted.created_from)
    if wanted.created_to is not None:
        statement = statement.where(orders.c.created_at < wanted.created_to)
    if after is not None:
        statement = statement.where(orders.c.id < after)
    return statement.order_by(orders.c.id.desc()).limit(limit)
