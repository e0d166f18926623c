"""Webhook endpoints, their outbox of deliveries, and every delivery attempt (migration 0012).

The outbox is filled by a trigger on order_events, in the transaction that appends the
event; the worker empties it (tradeops.webhooks.delivery)."""

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
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tradeops.db.base import Base, CreatedAt
from tradeops.webhooks.states import DELIVERY_STATUSES, EVENT_TYPES

_EVENT_TYPES_SQL = "ARRAY[" + ", ".join(f"'{t}'" for t in EVENT_TYPES) + "]::text[]"


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        CheckConstraint("url ~ '^https?://[^\\s]+$' AND length(url) <= 2000", name="url"),
        # Standard Webhooks: whsec_ and the base64 of 24 to 64 random bytes.
        CheckConstraint("secret ~ '^whsec_[A-Za-z0-9+/]{32,88}={0,2}$'", name="secret"),
        CheckConstraint(
            f"cardinality(event_types) > 0 AND event_types <@ {_EVENT_TYPES_SQL}",
            name="event_types",
        ),
        CheckConstraint("cardinality(desk_ids) > 0", name="desk_ids"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    # Kept as issued: signing needs the key itself. The application role may write it, never
    # read it (column grants); only the worker, as the database owner, reads it to sign.
    secret: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(ARRAY(Text))
    desk_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    created_by: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    created_at: Mapped[CreatedAt]
    # Deleting an endpoint disables it: its deliveries stay readable.
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookDelivery(Base):
    """One message to one endpoint: its webhook-id is the same on every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("webhook_id ~ '^msg_[0-9a-f]{32}$'", name="webhook_id"),
        CheckConstraint(f"status IN {DELIVERY_STATUSES}", name="status"),
        CheckConstraint("attempts >= 0", name="attempts"),
        CheckConstraint("(status = 'delivered') = (delivered_at IS NOT NULL)", name="delivered"),
        # One message per endpoint and order event, whoever appends the event.
        UniqueConstraint("endpoint_id", "order_id", "event_seq"),
        Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
        # The worker's queue: due deliveries only.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(
        Text,
        unique=True,
        server_default=text("'msg_' || replace(gen_random_uuid()::text, '-', '')"),
    )
    endpoint_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("webhook_endpoints.id"))
    event_type: Mapped[str] = mapped_column(Text)
    order_id: Mapped[int] = mapped_column(BigInteger)
    event_seq: Mapped[int] = mapped_column(Integer)
    desk_id: Mapped[int] = mapped_column(BigInteger)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[CreatedAt]
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttempt(Base):
    """One POST of a delivery: what the receiver answered, or why there was no answer."""

    __tablename__ = "webhook_attempts"

    delivery_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)
