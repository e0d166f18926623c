from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Identity, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from tradeops.db.base import Base, CreatedAt

ROLES = ("trader", "agent", "approver", "risk", "admin", "system")


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(f"role IN {ROLES}", name="role"),
        CheckConstraint("email = lower(email) AND position('@' IN email) > 1", name="email"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(start=1), primary_key=True)
    email: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    password_hash: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[CreatedAt]
