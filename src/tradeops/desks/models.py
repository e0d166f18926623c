from __future__ import annotations

from datetime import time

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Identity, Text, Time
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
