"""Risk limits: per desk, and per client on top of its desk's."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Numeric,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from tradeops.db.base import Base


class RiskLimit(Base):
    """A desk's limits (client_id NULL) or one client's (client_id set, desk_id its desk).

    A missing limit means "no limit" except the fat-finger band, which falls back to the
    setting TRADEOPS_FAT_FINGER_PCT. Where a desk and a client limit both apply, the
    stricter wins.
    """

    __tablename__ = "risk_limits"
    __table_args__ = (
        CheckConstraint(
            "max_order_notional IS NULL OR max_order_notional > 0", name="max_order_notional"
        ),
        CheckConstraint("max_position IS NULL OR max_position > 0", name="max_position"),
        CheckConstraint(
            "fat_finger_pct IS NULL OR (fat_finger_pct > 0 AND fat_finger_pct <= 100)",
            name="fat_finger_pct",
        ),
        # One row per desk and one per client: NULL client_id counts as a value here.
        UniqueConstraint("desk_id", "client_id", postgresql_nulls_not_distinct=True),
        # A client's limit sits on the client's own desk, and follows the client if it moves.
        ForeignKeyConstraint(
            ["client_id", "desk_id"],
            ["clients.id", "clients.desk_id"],
            onupdate="CASCADE",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    desk_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("desks.id"))
    client_id: Mapped[int | None] = mapped_column(BigInteger)
    # Money in the order's currency; quantities in units of the instrument.
    max_order_notional: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    max_position: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    fat_finger_pct: Mapped[Decimal | None] = mapped_column(Numeric(7, 4))
    updated_by: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
