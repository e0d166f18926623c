"""Executions: the fills a venue or the bank's OMS reports against approved orders."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from tradeops.db.base import Amount, Base, CreatedAt


class Execution(Base):
    """One fill of an order; recorded once per external id, never changed."""

    __tablename__ = "executions"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("price > 0", name="price_positive"),
        CheckConstraint("length(venue) BETWEEN 1 AND 64", name="venue"),
        CheckConstraint("external_id ~ '^[\\x21-\\x7E]{1,128}$'", name="external_id"),
        # The order's desk, checked against the order, so row-level security needs no join.
        ForeignKeyConstraint(["order_id", "desk_id"], ["orders.id", "orders.desk_id"]),
        Index("ix_executions_order_id_executed_at", "order_id", "executed_at"),
        # A venue's fill ids are unique within that venue; two venues may reuse an id.
        UniqueConstraint("venue", "external_id"),
        # A bust reverses one fill (migration 0017): at most once, and never a bust.
        CheckConstraint("kind IN ('FILL', 'BUST')", name="kind"),
        CheckConstraint(
            "(kind = 'BUST') = (reverses_execution_id IS NOT NULL)", name="bust_reverses_a_fill"
        ),
        CheckConstraint("(kind = 'BUST') = (reason IS NOT NULL)", name="bust_has_reason"),
        CheckConstraint("reason IS NULL OR length(reason) BETWEEN 1 AND 4000", name="reason"),
        UniqueConstraint("reverses_execution_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    order_id: Mapped[int] = mapped_column(BigInteger)
    desk_id: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[Amount]
    price: Mapped[Amount]
    venue: Mapped[str] = mapped_column(Text)
    executed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The venue's or OMS's id of the fill: a resent fill is recognised by it.
    external_id: Mapped[str] = mapped_column(Text)
    recorded_by: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    recorded_by_key_id: Mapped[int | None] = mapped_column(BigInteger)
    # Booking time; executed_at is the trade time.
    recorded_at: Mapped[CreatedAt]
    kind: Mapped[str] = mapped_column(Text, server_default="FILL")
    reverses_execution_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("executions.id")
    )
    reason: Mapped[str | None] = mapped_column(Text)
