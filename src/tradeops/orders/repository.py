"""Named queries over orders; access filtering is written once, in `readable_orders`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    bindparam,
    literal,
    literal_column,
    select,
    tuple_,
)

from tradeops.audit.repository import append_audit
from tradeops.auth.models import User
from tradeops.auth.principal import Principal
from tradeops.auth.repository import CallerRow
from tradeops.clients.models import Client
from tradeops.db.base import table_of
from tradeops.db.prepared import Query, as_row, prepare, query, written_into
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
    then: str = "",
    returning: str = "SELECT id, version FROM changed",
) -> str:
    """The one way an order changes: `change` (an INSERT or a conditional UPDATE of orders,
    `RETURNING *`) with its history event (seq = the order's new version, type
    :event_type) and its audit event (:action, the order before and after), in one
    statement, so one round trip. `first` are CTEs the change reads (a fill's execution,
    an amendment's new order: `changing`); `actor` names who acted where the transaction's
    context does not (the risk job). `before` as a string is the statement of the orders a
    batch changes (the expiry sweep), each audit event joined to its own order's state
    before. `then` are CTEs that read the change (a new order's risk job); `returning` must
    read them, or PostgreSQL skips them."""
    ctes = [first] if first else []
    ctes += changing(
        change, before=before, event_payload=event_payload, event_source=event_source, actor=actor
    )
    if then:
        ctes.append(then)
    return "WITH " + ", ".join(ctes) + " " + returning


def changing(
    change: str,
    *,
    name: str = "changed",
    before: bool | str = True,
    event_type: str = ":event_type",
    action: str = ":action",
    event_payload: str = "CAST(:payload AS jsonb)",
    event_source: str = "",
    actor: str = "",
) -> list[str]:
    """The CTEs of one order change as order_change describes it: `change` as `name`, its
    history event (`event_type`) as `name`_event and its audit event (`action`) as
    `name`_audit, the changed rows read as `c` (`event_source` by default `name` c). Two
    changes in one statement (an amendment: the new order, then the old one REPLACED) are
    two of these under two names."""
    ctes = []
    many = isinstance(before, str)
    if before:
        ctes.append(f"before AS ({before if many else 'SELECT * FROM orders WHERE id = :id'})")  # noqa: S608
    ctes.append(f"{name} AS ({change})")
    event_actor = (", actor", f", {actor}") if actor else ("", "")
    ctes.append(
        f"{name}_event AS (INSERT INTO order_events (order_id, desk_id, seq, type{event_actor[0]},"  # noqa: S608 - SQL from this code only
        f" payload) SELECT c.id, c.desk_id, c.version, {event_type}{event_actor[1]},"
        f" {event_payload} FROM {event_source or f'{name} c'})"
    )
    audit = append_audit(
        entity="'order'",
        entity_id="c.id::text",
        before="to_jsonb(b)" if before else "NULL",
        after="to_jsonb(c)",
        action=action,
        source=(
            f"{name} c JOIN before b ON b.id = c.id" if many else f"{name} c CROSS JOIN before b"
        )
        if before
        else f"{name} c",
        named=f"{actor}, tradeops_api_key_id(), tradeops_request_id()" if actor else "",
    )
    ctes.append(f"{name}_audit AS ({audit})")
    return ctes


def updating(set_: str, where: str) -> str:
    """The change of an order that exists: `set_` besides the new version, only `where`
    (besides the order's id, :id) holds."""
    return (
        f"UPDATE orders SET {set_}, version = version + 1, updated_at = now()"  # noqa: S608
        f" WHERE id = :id AND {where} RETURNING *"
    )


def risk_check_of(created: str) -> str:
    """The CTE `risk_job` that queues the risk check of each order `created` (a CTE) inserted,
    in the order's own statement, since its id is known only there: procrastinate_defer_jobs_v1
    as jobs/defer.py's defer_job calls it, with its queue :risk_queue (RISK_QUEUE), task
    :risk_task (CHECK_ORDER_RISK), lock order:<id> and args {"order_id": id}. No order
    inserted (a refusal, a repeated client_order_id): no job."""
    return (
        "risk_job AS (SELECT (procrastinate_defer_jobs_v1(ARRAY[ROW("  # noqa: S608 - SQL from this code only
        " CAST(:risk_queue AS varchar), CAST(:risk_task AS varchar), 0, 'order:' || n.id,"
        " CAST(NULL AS text), jsonb_build_object('order_id', n.id),"
        " CAST(NULL AS timestamptz))::procrastinate_job_to_defer_v1]))[1] AS risk_job_id"
        f" FROM {created} n)"
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
    approvals_required: int | None
    id: int | None
    status: str | None
    risk_status: str | None
    risk_reasons: list[Any] | None
    filled_quantity: Decimal | None
    expire_at: datetime | None
    version: int | None
    created_at: datetime | None
    updated_at: datetime | None
    risk_job_id: int | None  # the risk check queued with the order (None: no order)


# The columns of the new order that SUBMIT_ORDER returns beside the references.
CREATED_FIELDS = (
    "approvals_required",
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


# A new order's approvals_required is not written here: the BEFORE INSERT trigger on orders
# (orders_approvals_required, tradeops_approvals_required of migrations 0016 and 0018) sets it
# from the desk's policy whatever the writer sent, so the rule lives in one place. The
# statements below return the new row's value.

# Intake in one statement: find the client and instrument, insert the order only if every
# rule that needs their rows holds, append its first history event and its audit event, and
# return the references either way, so a refusal can be explained field by field. A repeated
# client_order_id inserts nothing. The trigger on orders checks the same rules again.
# A new order's columns, as intake and an amendment's new order fill them.
_NEW_ORDER = (
    "INSERT INTO orders (desk_id, client_id, instrument_id, side, order_type, time_in_force,"
    " expire_at, quantity, price, currency, client_order_id, created_by, created_by_key_id"
)
# What intake answers (Submitted's columns): the references, and the new order's columns.
_SUBMITTED = (
    "refs.*, n.approvals_required, n.id, n.status, n.risk_status, n.risk_reasons,"
    " n.filled_quantity, n.expire_at, n.version, n.created_at, n.updated_at, job.risk_job_id"
)
SUBMIT_ORDER = query(
    order_change(
        _NEW_ORDER + ")"  # noqa: S608 - SQL from this code only
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
        then=risk_check_of("changed"),
        returning=f"SELECT {_SUBMITTED} FROM refs"  # noqa: S608 - SQL from this code only
        " LEFT JOIN changed n ON true LEFT JOIN risk_job job ON true",
    ),
    Submitted,
)


@dataclass(frozen=True, slots=True)
class SubmittedBy(CallerRow):
    """POST /orders in one statement: who asked (the authenticating statement's row) and
    what intake returned, None when the caller may not submit orders (nothing was written).
    No row at all when the credentials name nobody."""

    submitted: Submitted | None

    def __post_init__(self) -> None:
        CallerRow.__post_init__(self)
        object.__setattr__(self, "submitted", as_row(self.submitted, Submitted))


# SUBMIT_ORDER's values that are the caller's, in tradeops_submit_order: its principal's.
_CALLERS_VALUES = {
    "created_by": "who.user_id",
    "created_by_key_id": "who.key_id",
    "all_desks": "who.all_desks",
    "desk_ids": "who.desk_ids",
}


def submit_order_function() -> str:
    """SUBMIT_ORDER's statement as tradeops_submit_order runs it (migration 0025): each
    value the caller's (_CALLERS_VALUES) or the function's argument of its name (`in_`
    before it), and the row answered as (who, tradeops_order_submitted). The installed
    function holds exactly this (tests/integration/test_one_statement_intake.py): a change
    to SUBMIT_ORDER comes with a migration that installs it again."""
    return _submit_order_answering(
        "SELECT who, ROW({})::tradeops_order_submitted FROM refs",
        lambda name: _CALLERS_VALUES.get(name, f"in_{name}"),
    )


# SUBMIT_ORDER's values as tradeops_record_order takes them (migration 0028), in its order.
_RECORDED_ORDER_ARGUMENTS = [
    "client_id",
    "symbol",
    "side",
    "order_type",
    "time_in_force",
    "expire_at",
    "quantity",
    "price",
    "client_order_id",
    "created_by",
    "created_by_key_id",
    "all_desks",
    "desk_ids",
    "event_type",
    "payload",
    "action",
    "risk_queue",
    "risk_task",
]

# Intake in a transaction (an Idempotency-Key, the MCP tool): SUBMIT_ORDER in a function
# whose triggers send no wake-ups (migration 0028); the caller hands them to the
# transaction, which sends them once committed (db/uow.py, UnitOfWork.wake_after_commit).
RECORD_ORDER = query(
    "SELECT * FROM tradeops_record_order("  # noqa: S608 - SQL from this code only
    + ", ".join(f":{name}" for name in _RECORDED_ORDER_ARGUMENTS)
    + ")",
    Submitted,
)


def record_order_function() -> str:
    """SUBMIT_ORDER's statement as tradeops_record_order runs it (migration 0028): each
    value the function's argument of its name (`in_` before it), the row answered as
    tradeops_order_submitted's columns. The installed function holds exactly this
    (tests/integration/test_wakeups_after_commit.py)."""
    return _submit_order_answering(
        "SELECT (ROW({})::tradeops_order_submitted).* FROM refs", lambda name: f"in_{name}"
    )


def _submit_order_answering(answer: str, value: Callable[[str], str]) -> str:
    """SUBMIT_ORDER's statement with each parameter written as `value` names it and its row
    answered as `answer` ("{}" standing for the row's columns)."""
    sql = SUBMIT_ORDER.prepared.written_with(value)
    answered = f"SELECT {_SUBMITTED} FROM refs"  # noqa: S608 - SQL from this code only
    if sql.count(answered) != 1:
        raise ValueError("SUBMIT_ORDER no longer answers its row as these functions expect")
    return sql.replace(answered, answer.format(_SUBMITTED))


# POST /orders in one round trip (issue 15): the function authenticates (as
# tradeops_read_order), and for a caller of a role in :roles whose key, if any, has :scope
# (the application's rule for submitting orders, auth.permissions), runs intake's statement
# after the switch, under row-level security, with the caller's values, waiting at most
# :lock_timeout_ms for any lock.
SUBMIT_IN_ONE_STATEMENT = query(
    "SELECT caller, submitted FROM tradeops_submit_order("
    ":prefix, :hash, :user_id, :email, :app_role, :request_id, :roles, :scope,"
    " :lock_timeout_ms,"
    " :client_id, :symbol, :side, :order_type, :time_in_force, :expire_at, :quantity, :price,"
    " :client_order_id, :event_type, :payload, :action, :risk_queue, :risk_task)",
    SubmittedBy,
    alone=True,
)


@dataclass(frozen=True, slots=True)
class AnsweredOnce(CallerRow):
    """A write with an Idempotency-Key in one statement (a decision or an amendment; a new
    order is SubmittedOnce): who asked, and the response to send, new or replayed (all None
    when the key is another request's: nothing was written). No row at all when the
    credentials name nobody."""

    status: int | None
    body: bytes | None
    headers: dict[str, str] | None
    replayed: bool | None


@dataclass(frozen=True, slots=True)
class SubmittedOnce(AnsweredOnce):
    """POST /orders with an Idempotency-Key in one statement: AnsweredOnce's row, and what
    intake recorded (None unless this request recorded the order; all None too when the
    caller may not submit orders)."""

    submitted: Submitted | None

    def __post_init__(self) -> None:
        CallerRow.__post_init__(self)
        object.__setattr__(self, "submitted", as_row(self.submitted, Submitted))


# The same with an Idempotency-Key (migration 0038): the key is reserved (or its stored
# response replayed), the order recorded and its response stored, in one round trip. An
# order intake does not record raises NOT_RECORDED_ALONE (db.http), undoing the key.
SUBMIT_ONCE_IN_ONE_STATEMENT = query(
    "SELECT caller, submitted, status, body, headers, replayed FROM tradeops_submit_order_once("
    ":prefix, :hash, :user_id, :email, :app_role, :request_id, :roles, :scope,"
    " :lock_timeout_ms,"
    " :client_id, :symbol, :side, :order_type, :time_in_force, :expire_at, :quantity, :price,"
    " :client_order_id, :event_type, :payload, :action, :risk_queue, :risk_task,"
    " :key, :fingerprint, :location)",
    SubmittedOnce,
    alone=True,
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
    approvals_required: int
    approvers: list[int]  # who approved it so far (user ids)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", OrderStatus(self.status))
        object.__setattr__(self, "risk_status", RiskStatus(self.risk_status))


_ORDER_FACTS = (
    "SELECT o.id, o.desk_id, o.status, o.version, o.created_by, o.risk_status, o.risk_reasons,"
    " o.approvals_required,"
    " ARRAY(SELECT a.approved_by FROM order_approvals a WHERE a.order_id = o.id) AS approvers"
)
ORDER_FACTS = query(_ORDER_FACTS + " FROM orders o WHERE o.id = :id", OrderFacts)


def locking(columns: str, joins: str = "") -> str:
    """The statement that locks an order (`o`) and reads `columns` of it and of `joins`:
    whoever is about to change an order reads it this way, so its changes queue here."""
    return f"SELECT {columns} FROM orders o {joins} WHERE o.id = :id FOR UPDATE OF o"  # noqa: S608


def locking_in_function(locked: Query[Any]) -> str:
    """A `locking` statement as a one-statement write's function runs it: the order
    `in_order_id`, only on the caller's (`who`) desks, read into `locked`."""
    sql = locked.prepared.written_with(lambda name: {"id": "in_order_id"}[name])
    return written_into(sql, " FROM orders o ", " INTO locked FROM orders o ").replace(
        " FOR UPDATE OF o", " AND (who.all_desks OR o.desk_id = ANY(who.desk_ids)) FOR UPDATE OF o"
    )


async def lock_order(uow: UnitOfWork, locked: Query[T], order_id: int) -> T | None:
    """The one order lock: `locked` is a `locking` statement; None: no such order (or one
    row-level security hides)."""
    return await uow.row(locked, {"id": order_id})


LOCK_ORDER = query(locking(_ORDER_FACTS.removeprefix("SELECT ")), OrderFacts)


@dataclass(frozen=True, slots=True)
class Changed:
    id: int
    version: int


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
class ApprovalRecorded:
    """`added`: this approval was recorded (False: its giver had approved already);
    `given`: the order's approvals now, counting it."""

    given: int
    added: bool


# One approval, read and written after the order is locked (a statement of its own, so its
# snapshot sees every approval committed before the lock was granted): the giver's approval
# unless they gave one already, and how many the order has now. The order's row is changed
# next, by TRANSITION: to APPROVED with the last approval, else only its version.
RECORD_APPROVAL = query(
    "WITH given AS (SELECT approved_by FROM order_approvals WHERE order_id = :id),"
    " added AS (INSERT INTO order_approvals (order_id, desk_id, approved_by, note)"
    "  SELECT :id, :desk_id, :approved_by, CAST(:note AS text)"
    "  WHERE NOT EXISTS (SELECT 1 FROM given WHERE approved_by = :approved_by)"
    "  ON CONFLICT DO NOTHING RETURNING approved_by)"
    " SELECT CAST((SELECT count(*) FROM given) + (SELECT count(*) FROM added) AS integer)"
    "  AS given, EXISTS (SELECT 1 FROM added) AS added",
    ApprovalRecorded,
)


@dataclass(frozen=True, slots=True)
class ReplacedOrder(OrderFacts):
    """What an amendment reads of the order it replaces (locked): the maker-checker facts (its
    approvals_required the old order's: the replacement's come from the band again), what
    the replacement copies, and the instrument's steps its new quantity and price must keep."""

    client_id: str
    desk: str
    symbol: str
    side: str
    order_type: str
    time_in_force: str
    quantity: Decimal
    price: Decimal | None
    currency: str
    filled_quantity: Decimal
    client_order_id: str | None
    lot_size: Decimal
    tick_size: Decimal


LOCK_REPLACED_ORDER = query(
    locking(
        _ORDER_FACTS.removeprefix("SELECT ") + ", c.external_id AS client_id, d.code AS desk,"
        " i.symbol, o.side, o.order_type, o.time_in_force, o.quantity, o.price, o.currency,"
        " o.filled_quantity, o.client_order_id, i.lot_size, i.tick_size",
        "JOIN clients c ON c.id = o.client_id JOIN desks d ON d.id = o.desk_id"
        " JOIN instruments i ON i.id = o.instrument_id",
    ),
    ReplacedOrder,
)


@dataclass(frozen=True, slots=True)
class Replacement:
    """The new order's columns the API shows that the replaced order does not give."""

    id: int
    status: OrderStatus
    risk_status: RiskStatus
    risk_reasons: list[Any]
    filled_quantity: Decimal
    expire_at: datetime | None
    replaces: int
    approvals_required: int
    version: int
    created_at: datetime
    updated_at: datetime
    risk_job_id: int  # the new order's risk check, queued in the same statement


# The replacement, born as intake makes an order (PENDING, risk PENDING) with its CREATED
# history and audit events; then the amended order's move to REPLACED naming it, with its own.
# A client_order_id the maker already used inserts nothing, so nothing is replaced.
# Its time in force is :time_in_force (the old order's unless amended) and its expiry a new
# order's: DAY gets the desk's next cut-off (the intake trigger of 0017, from a null
# expire_at: never the old order's), GTD the :expire_at asked for or else a GTD order's own
# (none from a DAY order: CHECK gtd_has_expire_at refuses it), the others none.
_REPLACEMENT = ", ".join(
    changing(
        _NEW_ORDER + ", replaces)"  # noqa: S608 - SQL from this code only
        " SELECT o.desk_id, o.client_id, o.instrument_id, o.side, o.order_type,"
        "  CAST(:time_in_force AS text),"
        "  CASE WHEN CAST(:time_in_force AS text) = 'GTD' THEN COALESCE("
        "   CAST(:expire_at AS timestamptz),"
        "   CASE WHEN o.time_in_force = 'GTD' THEN o.expire_at END)"
        "  END,"
        "  CAST(:quantity AS numeric), CAST(:price AS numeric), o.currency,"
        "  CAST(:client_order_id AS text), o.created_by, CAST(:created_by_key_id AS bigint),"
        " o.id FROM orders o"
        " WHERE o.id = :id AND o.version = :version AND o.status = :from_status"
        " ON CONFLICT (created_by, client_order_id) DO NOTHING RETURNING *",
        name="created",
        before=False,
        event_type="'CREATED'",
        action="'order.created'",
        event_payload="CAST(:created_payload AS jsonb)"
        " || jsonb_build_object('replaces', c.replaces)",
    )
)
REPLACE_ORDER = query(
    order_change(
        updating(
            "status = 'REPLACED', replaced_by = (SELECT id FROM created)",
            "version = :version AND status = :from_status AND EXISTS (SELECT FROM created)",
        ),
        first=_REPLACEMENT,
        event_payload="CAST(:payload AS jsonb) || jsonb_build_object('replaced_by', c.replaced_by)",
        then=risk_check_of("created"),
        returning="SELECT n.id, n.status, n.risk_status, n.risk_reasons, n.filled_quantity,"
        " n.expire_at, n.replaces, n.approvals_required, n.version, n.created_at, n.updated_at,"
        " job.risk_job_id FROM created n JOIN changed c ON c.replaced_by = n.id"
        " CROSS JOIN risk_job job",
    ),
    Replacement,
)


@dataclass(frozen=True, slots=True)
class AmendedBy(CallerRow):
    """PATCH /orders/{id} in one statement: who asked, and the new order (its id, version and
    document as GET writes it), all None when nothing was written. No row at all when the
    credentials name nobody."""

    id: int | None
    version: int | None
    document: str | None


# An amendment in one round trip (issue 15, migration 0040): the function authenticates, and
# for a caller who may submit orders (:roles, :scope) locks the order on their desks and
# replaces it (REPLACE_ORDER) only if no rule refuses the amendment: its version (if named),
# an open status (:open_statuses), its maker, and the new terms (lots, ticks, a MARKET
# order's price, a GTD's expiry). Nothing written: the endpoint, in a transaction, explains.
AMEND_IN_ONE_STATEMENT = query(
    "SELECT caller, new_id AS id, new_version AS version, document FROM tradeops_amend_order("
    ":prefix, :hash, :user_id, :email, :app_role, :request_id, :roles, :scope,"
    " :lock_timeout_ms, :order_id, :version, :open_statuses, :quantity, :price,"
    " :client_order_id, :time_in_force, :expire_at, :payload, :event_type, :action,"
    " :risk_queue, :risk_task)",
    AmendedBy,
    alone=True,
)


# The same with an Idempotency-Key (migration 0043), as DECIDE_ONCE_IN_ONE_STATEMENT.
AMEND_ONCE_IN_ONE_STATEMENT = query(
    "SELECT caller, status, body, headers, replayed FROM tradeops_amend_order_once("
    ":prefix, :hash, :user_id, :email, :app_role, :request_id, :roles, :scope,"
    " :lock_timeout_ms, :order_id, :version, :open_statuses, :quantity, :price,"
    " :client_order_id, :time_in_force, :expire_at, :payload, :event_type, :action,"
    " :risk_queue, :risk_task, :key, :fingerprint, :location)",
    AnsweredOnce,
    alone=True,
)
# REPLACE_ORDER's values in tradeops_amend_order: the locked order's (`locked`), the
# amended terms it worked out (`amended_*`), the caller's, or the argument of the name.
_AMENDED_VALUES = {
    "id": "in_order_id",
    "version": "locked.version",
    "from_status": "locked.status",
    "quantity": "amended_quantity",
    "price": "amended_price",
    "time_in_force": "amended_time_in_force",
    "created_by_key_id": "who.key_id",
    "created_payload": "in_payload",
}


def amend_order_function() -> tuple[str, str]:
    """LOCK_REPLACED_ORDER (on the caller's desks) and REPLACE_ORDER as tradeops_amend_order
    runs them (migration 0040), read into `locked` and `made`. The installed function holds
    exactly these (tests/integration/test_one_statement_amendments.py): a change to either
    comes with a migration."""
    replace = REPLACE_ORDER.prepared.written_with(
        lambda name: _AMENDED_VALUES.get(name, f"in_{name}")
    )
    return (
        locking_in_function(LOCK_REPLACED_ORDER),
        written_into(
            replace, " FROM created n JOIN changed c", " INTO made FROM created n JOIN changed c"
        ),
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


# An order's approvals, oldest first, as one JSON value of the order's row: no extra read.
APPROVALS: ColumnElement[Any] = literal_column(
    "(SELECT COALESCE(jsonb_agg(jsonb_build_object('approved_by', u.email,"
    " 'approved_at', a.approved_at, 'note', a.note) ORDER BY a.approved_at, u.email), '[]')"
    " FROM order_approvals a JOIN users u ON u.id = a.approved_by WHERE a.order_id = orders.id)"
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


# The event stream (orders/stream.py), in (transaction_id, id) order after a position. An
# event is `settled` when its transaction is older than every transaction in flight on the
# server (pg_snapshot_xmin of the statement's own snapshot, cheap) or, when `:exact`, every
# one in flight that may write here (order_events_horizon(), migration 0015, which reads
# pg_locks): nothing can commit before a settled event any more. The desk condition repeats
# row-level security, as for every read of orders.
EVENTS_AFTER = query(
    "SELECT e.id, e.transaction_id, e.order_id, d.code AS desk, e.seq AS version, e.type,"
    " e.actor, e.payload, e.at, e.transaction_id < h.horizon AS settled"
    " FROM (SELECT CASE WHEN CAST(:exact AS boolean) THEN order_events_horizon()"
    "  ELSE pg_snapshot_xmin(pg_current_snapshot())::text::bigint END AS horizon) AS h"
    " JOIN order_events e ON (e.transaction_id, e.id)"
    "  > (CAST(:after_transaction AS bigint), CAST(:after_id AS bigint))"
    " JOIN desks d ON d.id = e.desk_id"
    " WHERE (CAST(:all_desks AS boolean) OR e.desk_id = ANY(CAST(:desk_ids AS bigint[])))"
    " ORDER BY e.transaction_id, e.id LIMIT CAST(:limit AS integer)",
    StreamedEvent,
)


@dataclass(frozen=True, slots=True)
class EventTransaction:
    """A position in the stream's (transaction_id, id) order, by its transaction."""

    transaction_id: int


# Where a stream that starts now begins: at the oldest transaction in flight that may write.
STREAM_HORIZON = query("SELECT order_events_horizon() AS transaction_id", EventTransaction)

# The position of an event a client saw (Last-Event-ID), if it may see it.
EVENT_POSITION = query(
    "SELECT transaction_id FROM order_events WHERE id = CAST(:id AS bigint)"
    " AND (CAST(:all_desks AS boolean) OR desk_id = ANY(CAST(:desk_ids AS bigint[])))",
    EventTransaction,
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
            orders.c.approvals_required,
            APPROVALS.label("approvals"),
            orders.c.replaces,
            orders.c.replaced_by,
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


# An order as the API shows it, read: the view orders_as_shown (migration 0019), the columns
# of order_view() above, with which a write's RETURNING answers (test_one_statement_reads.py
# holds the two equal). The desk condition repeats what row-level security enforces, so a
# principal's filter never depends on the database alone.
_SHOWN = ", ".join(OrderOut.model_fields)
ORDER_BY_ID = query(
    f"SELECT {_SHOWN} FROM orders_as_shown WHERE id = :id"  # noqa: S608 - constants only
    " AND (CAST(:all_desks AS boolean) OR desk_id = ANY(CAST(:desk_ids AS bigint[])))",
    OrderOut,
)


@dataclass(frozen=True, slots=True)
class OrderDocument:
    """An order as the API shows it, written by PostgreSQL: its JSON document (the bytes
    OrderOut.model_dump_json() writes for it) and its version, the ETag."""

    document: str
    version: int


@dataclass(frozen=True, slots=True)
class OrderRead(CallerRow):
    """GET /orders/{id} in one statement: who asked (the authenticating statement's row) and
    the order they may see, if any, as the API shows it: its JSON document, written by
    PostgreSQL as OrderOut would write it (migration 0026), and its version (the ETag). No
    row at all when the credentials name nobody."""

    version: int | None
    document: str | None

    @property
    def found(self) -> OrderDocument | None:
        if self.document is None or self.version is None:
            return None
        return OrderDocument(self.document, self.version)


# The hot read in one round trip: the function authenticates (an API key by prefix and hash,
# else a person by a verified token's subject), switches to the application role with the
# caller's context, and only then reads the order under row-level security.
READ_ORDER = query(
    "SELECT caller, version, document FROM tradeops_read_order("
    ":prefix, :hash, :user_id, :email, :app_role, :request_id, :order_id)",
    OrderRead,
    alone=True,
)


@dataclass(frozen=True, slots=True)
class OrderHistoryRead(CallerRow):
    """GET /orders/{id}/events in one statement: who asked, and the order's events oldest
    first (ORDER_EVENTS' columns, `at` as JSON text), None when no such order is visible to
    them. No row at all when the credentials name nobody."""

    history: list[dict[str, Any]] | None


# The caller's own order by its client_order_id in one round trip (migration 0046), as
# ORDER_BY_CLIENT_ORDER_ID reads it, written as READ_ORDER writes it.
READ_OWN_ORDER = query(
    "SELECT caller, version, document FROM tradeops_read_own_order("
    ":prefix, :hash, :user_id, :email, :app_role, :request_id, :client_order_id)",
    OrderRead,
    alone=True,
)


# An order's history in one round trip (migration 0037), as READ_ORDER reads the order.
READ_ORDER_HISTORY = query(
    "SELECT caller, history FROM tradeops_read_order_history("
    ":prefix, :hash, :user_id, :email, :app_role, :request_id, :order_id)",
    OrderHistoryRead,
    alone=True,
)


# The change a maker-checker decision makes to the order, whoever runs it (TRANSITION here,
# tradeops_decide_order in the database).
_DECIDED = updating(
    "status = :to_status, reviewed_by = COALESCE(:reviewed_by, reviewed_by),"
    " approved_by = COALESCE(:approved_by, approved_by),"
    " rejected_by = COALESCE(:rejected_by, rejected_by)",
    "version = :version AND status = :from_status",
)


# A maker-checker transition: one conditional UPDATE (the row is already locked, the version
# re-checked); the triggers of maker-checker check the decision again. It answers the order
# as the API shows it after the change (ORDER_BY_ID's columns), so nothing reads it again:
# the last CTE, `orders`, is the changed row, and hides the table from order_view()'s
# SELECT only (a CTE is seen by the statement and the CTEs after it, none of which writes).
TRANSITION = query(
    order_change(
        _DECIDED,
        then="orders AS (SELECT * FROM changed)",
        returning=prepare(order_view()).sql,
    ),
    OrderOut,
)

# A decision in one round trip (issue 15: "a write needs at most two"): review, approve,
# reject or cancel. The function authenticates (as tradeops_read_order); for a caller of a
# role in :roles whose key, if any, has every scope in :scopes (NULL: no key may), it locks
# the order if the decision may start from its status, on a desk of the caller's, at
# :version if one is given; not its maker's if :checker; its maker's unless the caller's
# role is in :others_by (if given); for an :approval, with its risk check PASSED and one
# approval needed, and records the approval (RECORD_APPROVAL). Then it makes TRANSITION's
# change (DECISION_CHANGE) and answers the order's document as GET does. Nothing written,
# the row has no version and no document: the endpoint, in a transaction, explains.
DECIDE_IN_ONE_STATEMENT = query(
    "SELECT caller, new_version AS version, document FROM tradeops_decide_order("
    ":prefix, :hash, :user_id, :email, :app_role, :request_id, :roles, :scopes,"
    " :lock_timeout_ms, :order_id, :version, :from_statuses, :checker, :others_by,"
    " :approval, :note, :to_status, :event_type, :payload, :action)",
    OrderRead,
    alone=True,
)
# The same with an Idempotency-Key (migration 0043): the key is reserved (or its stored
# response replayed), the decision made and its response stored, in one round trip. A
# decision tradeops_decide_order does not make raises NOT_RECORDED_ALONE (db.http).
DECIDE_ONCE_IN_ONE_STATEMENT = query(
    "SELECT caller, status, body, headers, replayed FROM tradeops_decide_order_once("
    ":prefix, :hash, :user_id, :email, :app_role, :request_id, :roles, :scopes,"
    " :lock_timeout_ms, :order_id, :version, :from_statuses, :checker, :others_by,"
    " :approval, :note, :to_status, :event_type, :payload, :action, :key, :fingerprint)",
    AnsweredOnce,
    alone=True,
)


DECISION_CHANGE = order_change(_DECIDED, returning="SELECT version FROM changed")
# The values of DECISION_CHANGE and RECORD_APPROVAL in tradeops_decide_order: the locked
# order's, the decider's, or else the function's argument of the name.
_LOCKED_VALUES = {
    "id": "in_order_id",
    "desk_id": "at_desk",
    "version": "at_version",
    "from_status": "at_status",
}
_DECIDERS = {
    "reviewed_by": "by_reviewer",
    "approved_by": "by_approver",
    "rejected_by": "by_rejecter",
}


def decide_order_function() -> tuple[str, str]:
    """RECORD_APPROVAL and DECISION_CHANGE as tradeops_decide_order runs them (migration
    0035): the approval's count and whether it was added read into `n_given` and
    `was_added`, the order's new version into `at_version`. The installed function holds
    exactly these (tests/integration/test_one_statement_decisions.py): a change to either
    comes with a migration."""
    approval = RECORD_APPROVAL.prepared.written_with(
        lambda name: _function_value(name, {"approved_by": "who.user_id"})
    )
    change = prepare(DECISION_CHANGE).written_with(lambda name: _function_value(name, _DECIDERS))
    return (
        approval + " INTO n_given, was_added",
        written_into(change, " SELECT version FROM", " SELECT version INTO at_version FROM"),
    )


def _function_value(name: str, own: dict[str, str]) -> str:
    return own.get(name) or _LOCKED_VALUES.get(name) or f"in_{name}"


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


# The list's filters by key, not by the names the API shows: an external client id, a symbol
# or a desk code becomes its row's id first (one unique-index probe each, and clients under
# row-level security, so another desk's client is not found), and orders are then filtered
# by client_id, instrument_id or desk_id, whose (…, id) indexes give them newest first.
# Filtering on clients.external_id through the join read orders newest first until a match.
@dataclass(frozen=True, slots=True)
class ListFilterKeys:
    """The row ids behind a list's client, symbol and desk filters (None: not filtered, or
    the name matches nothing)."""

    client: int | None = None
    instrument: int | None = None
    desk: int | None = None


LIST_FILTER_KEYS = query(
    "SELECT (SELECT id FROM clients WHERE external_id = CAST(:client_id AS text)) AS client,"
    " (SELECT id FROM instruments WHERE symbol = CAST(:symbol AS text)) AS instrument,"
    " (SELECT id FROM desks WHERE code = CAST(:desk AS text)) AS desk",
    ListFilterKeys,
)

# Where a page ends: the last order's id, or with a created range (created_at, id).
ListKey = tuple[int] | tuple[datetime, int]


@dataclass(frozen=True, slots=True)
class OrderPageRead(CallerRow):
    """GET /orders in one statement: who asked, and the page they may see: its orders' JSON
    array (each as GET /orders/{id} writes it), whether another page follows, and then the
    last order's id and creation time, for the cursor. No row at all when the credentials
    name nobody."""

    items: str
    more: bool
    last_id: int | None
    last_created_at: datetime | None


# A page of the list in one round trip (migration 0041), as filtered_orders and
# LIST_FILTER_KEYS read it in a transaction.
READ_ORDER_PAGE = query(
    "SELECT caller, items, more, last_id, last_created_at FROM tradeops_read_order_page("
    ":prefix, :hash, :user_id, :email, :app_role, :request_id, :status, :risk_status,"
    " :client_id, :symbol, :side, :client_order_id, :desk, :created_from, :created_to,"
    " :after_created, :after_id, :limit)",
    OrderPageRead,
    alone=True,
)


def filtered_orders(
    principal: Principal,
    wanted: OrderFilters,
    keys: ListFilterKeys,
    *,
    after: ListKey | None,
    limit: int,
) -> Select[Any]:
    """A page of the orders a principal may read, newest first, after the keyset `after`.
    Every condition is on orders' own columns, so an index of orders can serve it: the
    client, symbol and desk of `wanted` by their `keys` (a name without a key matches no
    order).

    Newest first is by id, or with a created range by (created_at, id) (`after` is then that
    pair): read back from the range's end on (created_at, id), a range costs the same
    however far back it lies. By id, PostgreSQL walks the id index from the newest order
    until it reaches the range: it prices that walk as if the range's orders were spread
    over all ids, when they lie together, and took 8 s for one day 600 days back of ten
    million. Ids cannot stand in for the range: they follow created_at only roughly."""
    statement = readable_orders(principal)
    if wanted.client_id is not None:
        statement = statement.where(orders.c.client_id == keys.client)
    if wanted.symbol is not None:
        statement = statement.where(orders.c.instrument_id == keys.instrument)
    if wanted.desk is not None:
        statement = statement.where(orders.c.desk_id == keys.desk)
    if wanted.status is not None:
        statement = statement.where(orders.c.status == wanted.status)
    if wanted.statuses is not None:
        statement = statement.where(orders.c.status.in_(wanted.statuses))
    if wanted.risk_status is not None:
        statement = statement.where(orders.c.risk_status == wanted.risk_status)
    if wanted.made_by is not None:
        statement = statement.where(orders.c.created_by == wanted.made_by)
    if wanted.side is not None:
        statement = statement.where(orders.c.side == wanted.side)
    if wanted.client_order_id is not None:
        statement = statement.where(orders.c.client_order_id == wanted.client_order_id)
    if wanted.created_from is not None:
        statement = statement.where(orders.c.created_at >= wanted.created_from)
    if wanted.created_to is not None:
        statement = statement.where(orders.c.created_at < wanted.created_to)
    key = (orders.c.created_at, orders.c.id) if wanted.by_created else (orders.c.id,)
    if after is not None:
        bound = (literal(v, column.type) for column, v in zip(key, after, strict=True))
        statement = statement.where(tuple_(*key) < tuple_(*bound))
    return statement.order_by(*(column.desc() for column in key)).limit(limit)
