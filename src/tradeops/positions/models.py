"""Positions: what each client holds of each instrument, kept by average cost."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    Numeric,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from tradeops.db.base import Base, CreatedAt


class Position(Base):
    """A client's holding of an instrument (tradeops.positions.accounting has the arithmetic).

    quantity is signed (negative: short); cost_basis is what the open quantity cost, signed
    like it; avg_cost = cost_basis / quantity, rounded, null when flat. A flat position stays,
    carrying its realized P&L.
    """

    __tablename__ = "positions"
    __table_args__ = (
        CheckConstraint("(quantity = 0) = (avg_cost IS NULL)", name="avg_cost_when_open"),
        CheckConstraint("avg_cost IS NULL OR avg_cost > 0", name="avg_cost_positive"),
        CheckConstraint("sign(cost_basis) = sign(quantity)", name="cost_basis_sign"),
        CheckConstraint("version >= 1", name="version_positive"),
        # A position sits on its client's desk, and follows the client if it moves.
        ForeignKeyConstraint(
            ["client_id", "desk_id"], ["clients.id", "clients.desk_id"], onupdate="CASCADE"
        ),
    )

    client_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    instrument_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("instruments.id"), primary_key=True, index=True
    )
    # The client's desk, so row-level security needs no join.
    desk_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("desks.id"), index=True)
    quantity: Mapped[Decimal] = mapped_column(Numeric(20, 6), server_default="0")
    avg_cost: Mapped[Decimal | None] = mapped_column(Numeric(30, 10))
    cost_basis: Mapped[Decimal] = mapped_column(Numeric(40, 12), server_default="0")
    realized_pnl: Mapped[Decimal] = mapped_column(Numeric(40, 12), server_default="0")
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
