from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Integer,
    LargeBinary,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from tradeops.db.base import Base, CreatedAt

ROLES = ("trader", "agent", "approver", "risk", "admin", "system")


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(f"role IN {ROLES}", name="role"),
        CheckConstraint("email = lower(email) AND position('@' IN email) > 1", name="email"),
        CheckConstraint("page_session_generation >= 0", name="page_session_generation"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(start=1), primary_key=True)
    email: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    password_hash: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    # Page sessions (cookies) carry the generation they began in; signing out moves it on.
    page_session_generation: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[CreatedAt]


class ApiKey(Base):
    """An agent's or service's key: acts as its owner, narrowed by scopes and desks."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("prefix ~ '^[a-z0-9]{12}$'", name="prefix"),
        CheckConstraint("hash ~ '^[0-9a-f]{64}$'", name="hash"),
        CheckConstraint("cardinality(scopes) > 0", name="scopes_not_empty"),
        CheckConstraint("length(name) BETWEEN 1 AND 100", name="name"),
        # What orders' (created_by_key_id, created_by) refers to: a key with its owner.
        UniqueConstraint("id", "owner_user_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    owner_user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(Text)
    prefix: Mapped[str] = mapped_column(Text, unique=True)
    hash: Mapped[str] = mapped_column(Text)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    # NULL: every desk of the owner; otherwise only these (and only while the owner has them).
    desk_ids: Mapped[list[int] | None] = mapped_column(ARRAY(BigInteger))
    created_at: Mapped[CreatedAt]
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SignInThrottle(Base):
    """Failed sign-ins per email, known or not (the SHA-256 of the lower-cased email), so an
    unknown email is throttled exactly like one with an account."""

    __tablename__ = "sign_in_throttle"
    __table_args__ = (
        CheckConstraint("failures > 0", name="failures"),
        CheckConstraint("length(email_key) = 32", name="email_key_sha256"),
    )

    email_key: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
