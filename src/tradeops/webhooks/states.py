"""The words of webhooks, as the API takes them and the database's CHECK constraints spell them."""

from __future__ import annotations

from typing import Literal, get_args

# What an endpoint may subscribe to; the trigger of migration 0012 maps order events to them.
EventType = Literal[
    "order.awaiting_approval",
    "order.approved",
    "order.rejected",
    "order.expired",
    "order.filled",
    "order.risk_failed",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)

DeliveryStatus = Literal["pending", "delivered", "failed", "cancelled"]
DELIVERY_STATUSES: tuple[str, ...] = get_args(DeliveryStatus)
