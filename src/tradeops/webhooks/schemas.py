"""What the webhook endpoints of the API take and give."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tradeops.webhooks.states import DeliveryStatus, EventType


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=8,
        max_length=2000,
        pattern=r"^https?://\S+$",
        examples=["https://ops.example.com/tradeops/webhooks"],
    )
    event_types: list[EventType] = Field(min_length=1, max_length=6)
    desks: list[str] = Field(min_length=1, max_length=100, examples=[["EQ-US"]])


class WebhookOut(BaseModel):
    id: int
    url: str
    event_types: list[str]
    desks: list[str]
    created_by: str
    created_at: datetime
    disabled_at: datetime | None


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="The signing secret (whsec_…): shown this once, never again",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )


class WebhookList(BaseModel):
    items: list[WebhookOut]


class AttemptOut(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status; none if no answer")
    error: str | None
    duration_ms: int


class DeliveryOut(BaseModel):
    webhook_id: str = Field(description="The webhook-id header: the same on every attempt")
    event_type: str
    order_id: int
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None = Field(description="While pending: when it is tried next")
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any] = Field(description="The body sent")
    attempt_log: list[AttemptOut] = Field(description="Every attempt, oldest first")


class DeliveryPage(BaseModel):
    items: list[DeliveryOut] = Field(description="Newest first")
    next_cursor: str | None
