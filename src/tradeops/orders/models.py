from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    Numeric,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tradeops.db.base import Amount, Base, CreatedAt
from tradeops.orders import states
from tradeops.orders.states import OrderStatus, RiskStatus, Side

# Plain strings: the CHECK constraints below render them as SQL literals.
SIDES = tuple(s.value for s in Side)
ORDER_TYPES = ("LIMIT", "MARKET")
TIMES_IN_FORCE = ("DAY", "GTC", "IOC", "FOK", "GTD")
# states.OPEN_STATUSES as SQL literals, in the statuses' order (the partial index's text).
OPEN_STATUSES = tuple(s.value for s in OrderStatus if s in states.OPEN_STATUSES)
ORDER_STATUSES = tuple(s.value for s in OrderStatus)
RISK_STATUSES = tuple(s.value for s in RiskStatus)


def one_of(values: tuple[str, ...]) -> str:
    """`values` as one SQL array constant. PostgreSQL reads a table's CHECK constraints back
    for every statement that writes it: `= ANY` of one constant is one node to read, where
    `IN (...)` is one per value (migration 0032)."""
    return "'{" + ",".join(values) + "}'::text[]"


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint(f"side = ANY ({one_of(SIDES)})", name="side"),
        CheckConstraint(f"order_type = ANY ({one_of(ORDER_TYPES)})", name="order_type"),
        CheckConstraint(f"time_in_force = ANY ({one_of(TIMES_IN_FORCE)})", name="time_in_force"),
        CheckConstraint(f"status = ANY ({one_of(ORDER_STATUSES)})", name="status"),
        CheckConstraint(f"risk_status = ANY ({one_of(RISK_STATUSES)})", name="risk_status"),
        CheckConstraint("quantity > 0.0", name="quantity_positive"),
        CheckConstraint("price IS NULL OR price > 0.0", name="price_positive"),
        # A limit order carries its limit price; a market order has none.
        CheckConstraint("(order_type = 'LIMIT') = (price IS NOT NULL)", name="price_matches_type"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency"),
        CheckConstraint(
            "filled_quantity >= 0.0 AND filled_quantity <= quantity", name="filled_within_quantity"
        ),
        # Fills (tradeops.executions): the status says how much is filled, and an order has
        # an average fill price exactly when something is filled.
        CheckConstraint("status <> 'FILLED' OR filled_quantity = quantity", name="filled_status"),
        CheckConstraint(
            "status <> 'PARTIALLY_FILLED'"
            " OR (filled_quantity > 0.0 AND filled_quantity < quantity)",
            name="partially_filled_status",
        ),
        CheckConstraint(
            "(filled_quantity = 0.0) = (avg_fill_price IS NULL)", name="avg_fill_price_when_filled"
        ),
        CheckConstraint("version >= 1", name="version_positive"),
        # Expiry (migration 0017): GTD names its time, DAY gets its desk's cut-off (a trigger).
        CheckConstraint(
            "time_in_force <> 'GTD' OR expire_at IS NOT NULL", name="gtd_has_expire_at"
        ),
        CheckConstraint(
            f"time_in_force = ANY ({one_of(('DAY', 'GTD'))}) OR expire_at IS NULL",
            name="expire_at_only_day_or_gtd",
        ),
        # A bust that takes every fill back leaves the order APPROVED, unfilled.
        CheckConstraint("status <> 'APPROVED' OR filled_quantity = 0.0", name="approved_unfilled"),
        CheckConstraint(
            "client_order_id IS NULL OR client_order_id ~ '^[\\x21-\\x7E]{1,64}$'",
            name="client_order_id",
        ),
        # Maker-checker's row rules; the transitions' rules are triggers (migration 0011).
        CheckConstraint(
            "approved_by IS NULL OR approved_by <> created_by", name="approver_is_not_maker"
        ),
        CheckConstraint(
            "rejected_by IS NULL OR rejected_by <> created_by", name="rejecter_is_not_maker"
        ),
        CheckConstraint(
            f"status <> ALL ({one_of(('APPROVED', 'PARTIALLY_FILLED', 'FILLED'))})"
            " OR approved_by IS NOT NULL",
            name="approved_has_approver",
        ),
        CheckConstraint(
            "(status = 'REJECTED') = (rejected_by IS NOT NULL)", name="rejected_has_rejecter"
        ),
        # Set at intake from the desk's approval policy (migration 0016); never changes.
        CheckConstraint("approvals_required BETWEEN 1 AND 5", name="approvals_required"),
        # The key an order came through is its maker's: a key acts as its owner, so the
        # maker's key owner is the maker, for every row and every writer.
        ForeignKeyConstraint(
            ["created_by_key_id", "created_by"], ["api_keys.id", "api_keys.owner_user_id"]
        ),
        UniqueConstraint("created_by", "client_order_id"),
        # An amendment (migration 0014): the replacement and the order it replaces name each
        # other, on the same desk, at most once each; a REPLACED order names its replacement.
        ForeignKeyConstraint(["replaces", "desk_id"], ["orders.id", "orders.desk_id"]),
        ForeignKeyConstraint(["replaced_by", "desk_id"], ["orders.id", "orders.desk_id"]),
        UniqueConstraint("replaces"),
        UniqueConstraint("replaced_by"),
        CheckConstraint(
            "(status = 'REPLACED') = (replaced_by IS NOT NULL)", name="replaced_names_replacement"
        ),
        # Lets order_events carry the order's desk, checked by a composite foreign key.
        UniqueConstraint("id", "desk_id"),
        Index("ix_orders_client_id_id", "client_id", "id"),
        Index("ix_orders_status_id", "status", "id"),
        Index("ix_orders_desk_id_id", "desk_id", "id"),
        # The list's filters, each newest first (migration 0013).
        Index("ix_orders_instrument_id_id", "instrument_id", "id"),
        Index("ix_orders_desk_id_status_id", "desk_id", "status", "id"),
        Index("ix_orders_desk_id_risk_status_id", "desk_id", "risk_status", "id"),
        Index("ix_orders_created_at_id", "created_at", "id"),
        # The client_order_id filter and look-up of an approver (migration 0014).
        Index(
            "ix_orders_client_order_id_id",
            "client_order_id",
            "id",
            postgresql_where=text("client_order_id IS NOT NULL"),
        ),
        # The expiry sweep's one query: due orders of the open statuses (migration 0017).
        Index(
            "ix_orders_expire_at_open",
            "expire_at",
            postgresql_where=text(f"status IN {OPEN_STATUSES} AND expire_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    desk_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("desks.id"))
    client_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("clients.id"))
    instrument_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("instruments.id"))
    side: Mapped[str] = mapped_column(Text)
    order_type: Mapped[str] = mapped_column(Text)
    time_in_force: Mapped[str] = mapped_column(Text, server_default="DAY")
    quantity: Mapped[Amount]
    price: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    currency: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="PENDING")
    risk_status: Mapped[str] = mapped_column(Text, server_default="PENDING")
    risk_reasons: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    filled_quantity: Mapped[Decimal] = mapped_column(Numeric(20, 6), server_default="0")
    avg_fill_price: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    client_order_id: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    created_by_key_id: Mapped[int | None] = mapped_column(BigInteger)
    reviewed_by: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("users.id"))
    approved_by: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("users.id"))
    rejected_by: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("users.id"))
    approvals_required: Mapped[int] = mapped_column(Integer, server_default="1")
    replaces: Mapped[int | None] = mapped_column(BigInteger)
    replaced_by: Mapped[int | None] = mapped_column(BigInteger)
    # When an open order expires (DAY: the desk's next cut-off; GTD: as asked; else none).
    expire_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class OrderEvent(Base):
    """One step of an order's history, appended in the transaction that made the step."""

    __tablename__ = "order_events"
    __table_args__ = (
        ForeignKeyConstraint(
            ["order_id", "desk_id"], ["orders.id", "orders.desk_id"], ondelete="CASCADE"
        ),
        # The event stream's read order (orders/stream.py).
        Index("ix_order_events_transaction_id_id", "transaction_id", "id"),
    )

    order_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # The event's id in the stream (Last-Event-ID); not in commit order, see transaction_id.
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), unique=True)
    # The writing transaction (pg_current_xact_id()): the stream reads events in
    # (transaction_id, id) order, up to the oldest transaction in flight (migration 0015).
    transaction_id: Mapped[int] = mapped_column(
        BigInteger, server_default=text("(pg_current_xact_id()::text)::bigint")
    )
    # The order's desk, so row-level security needs no lookup of the order.
    desk_id: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(Text)
    # The context's actor (tradeops_actor(), migration 0011) unless the writer names one.
    actor: Mapped[str] = mapped_column(Text, server_default=text("tradeops_actor()"))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class OrderApproval(Base):
    """One person's approval of an order; the primary key makes approvers distinct. The
    order reaches APPROVED with its approvals_required-th (trigger of migration 0016)."""

    __tablename__ = "order_approvals"
    __table_args__ = (
        ForeignKeyConstraint(
            ["order_id", "desk_id"], ["orders.id", "orders.desk_id"], ondelete="CASCADE"
        ),
    )

    order_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # The order's desk, so row-level security needs no lookup of the order.
    desk_id: Mapped[int] = mapped_column(BigInteger)
    approved_by: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"), primary_key=True)
    approved_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    note: Mapped[str | None] = mapped_column(Text)
