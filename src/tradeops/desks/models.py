from __future__ import annotations

from datetime import datetime, time
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Integer,
    Numeric,
    Text,
    Time,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from tradeops.db.base import Base


class Desk(Base):
    __tablename__ = "desks"
    __table_args__ = (
        # An IANA name PostgreSQL knows: converting a time into it fails otherwise.
        CheckConstraint(
            "time_zone ~ '^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$'"
            " AND (timestamptz '2000-01-01 00:00Z' AT TIME ZONE time_zone) IS NOT NULL",
            name="time_zone",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    code: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str] = mapped_column(Text)
    # The desk's end of day, when its DAY orders expire (migration 0017).
    time_zone: Mapped[str] = mapped_column(Text, server_default="UTC")
    day_cutoff: Mapped[time] = mapped_column(Time, server_default="23:59")


class DeskMember(Base):
    __tablename__ = "desk_members"

    user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    desk_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("desks.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class DeskApprovalPolicy(Base):
    """How many approvals, from distinct people, a desk's orders need: by notional bands
    (approval_bands), in `currency`. A desk without a policy needs one approval."""

    __tablename__ = "desk_approval_policies"
    __table_args__ = (CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency"),)

    desk_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("desks.id"), primary_key=True)
    currency: Mapped[str] = mapped_column(Text)
    updated_by: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class ApprovalBand(Base):
    """Orders of at least `min_notional` (up to the next band) need `approvals`. The first
    band starts at 0 (a deferred constraint trigger, migration 0016)."""

    __tablename__ = "approval_bands"
    __table_args__ = (
        CheckConstraint("min_notional >= 0", name="min_notional"),
        CheckConstraint("approvals BETWEEN 1 AND 5", name="approvals"),
    )

    desk_id: Mapped[int] = mapped_column(
        BigInteger,
        ForeignKey("desk_approval_policies.desk_id", ondelete="CASCADE"),
        primary_key=True,
    )
    min_notional: Mapped[Decimal] = mapped_column(Numeric(20, 6), primary_key=True)
    approvals: Mapped[int] = mapped_column(Integer)
