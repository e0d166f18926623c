from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from tradeops.db.base import Base, CreatedAt

CLIENT_STATUSES = ("ACTIVE", "INACTIVE")


class Client(Base):
    __tablename__ = "clients"
    __table_args__ = (
        CheckConstraint(f"status IN {CLIENT_STATUSES}", name="status"),
        CheckConstraint("external_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'", name="external_id"),
        CheckConstraint("length(name) BETWEEN 1 AND 200", name="name"),
        # Lets rows that belong to a client (its risk limits) carry and check its desk.
        UniqueConstraint("id", "desk_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    external_id: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str] = mapped_column(Text)
    desk_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("desks.id"), index=True)
    status: Mapped[str] = mapped_column(Text, server_default="ACTIVE")
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
