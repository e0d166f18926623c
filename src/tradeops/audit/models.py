from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tradeops.db.base import Base


class AuditEvent(Base):
    """One change, chained to the previous change of the same stream (an entity) by hash.

    seq, prev_hash and hash are filled by a trigger, so every writer chains the same way and
    writers of different streams never wait for each other. Another trigger fills desk_id
    (the desk the event concerns, NULL for desk-less entities such as users and keys), which
    row-level security reads; it is a label outside the hash (see migration 0009).
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("stream", "seq"),
        Index("ix_audit_events_entity_entity_id", "entity", "entity_id"),
        Index("ix_audit_events_desk_id_id", "desk_id", "id"),
        CheckConstraint(
            "entity NOT IN ('order', 'execution', 'position', 'risk_limit', 'client')"
            " OR desk_id IS NOT NULL",
            name="desk_bound_has_desk",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    stream: Mapped[str] = mapped_column(Text)
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # From the transaction's context unless a writer without one names them (migration 0011).
    actor: Mapped[str] = mapped_column(Text, server_default=text("tradeops_actor()"))
    api_key_id: Mapped[int | None] = mapped_column(
        BigInteger, server_default=text("tradeops_api_key_id()")
    )
    request_id: Mapped[str | None] = mapped_column(
        Text, server_default=text("tradeops_request_id()")
    )
    action: Mapped[str] = mapped_column(Text)
    entity: Mapped[str] = mapped_column(Text)
    entity_id: Mapped[str] = mapped_column(Text)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    prev_hash: Mapped[str] = mapped_column(Text)
    hash: Mapped[str] = mapped_column(Text)
    desk_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("desks.id"))


class AuditCheckpoint(Base):
    """A signed summary of the whole trail up to `upto_id`: the rolling hash of every event's
    hash in id order, HMAC-signed with TRADEOPS_AUDIT_KEY (which the database never sees)."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    upto_id: Mapped[int] = mapped_column(BigInteger)
    events: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditStreamHead(Base):
    """The latest seq and hash of each stream; its row lock orders one stream's writers."""

    __tablename__ = "audit_stream_heads"

    stream: Mapped[str] = mapped_column(Text, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(Text)
