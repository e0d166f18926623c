from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from tradeops.decimals import DecimalOut, PositiveAmount
from tradeops.orders.schemas import OrderStatus

ExternalExecutionId = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7E]{1,128}$")]
# Upper-cased, so XNAS and xnas are one venue (and one namespace of fill ids).
Venue = Annotated[
    str, StringConstraints(strip_whitespace=True, to_upper=True, min_length=1, max_length=64)
]


class ExecutionIn(BaseModel):
    """A fill of an order, as the venue or OMS reports it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "quantity": "20",
                    "price": "192.50",
                    "venue": "XNAS",
                    "executed_at": "2026-11-23T14:30:05.125Z",
                    "external_id": "XNAS-20261123-000417",
                }
            ]
        },
    )

    quantity: PositiveAmount = Field(
        description="Units filled: > 0, a multiple of the lot size, at most what is left"
    )
    price: PositiveAmount = Field(
        description="Fill price in the order's currency; for a LIMIT order not above the "
        "limit (BUY) or below it (SELL)"
    )
    venue: Venue = Field(description="Where it was executed, e.g. a MIC such as XNAS")
    executed_at: AwareDatetime = Field(description="When, ISO 8601 with a time zone")
    external_id: ExternalExecutionId = Field(
        description="The venue's or OMS's id of the fill, unique per venue: sending the same "
        "fill again answers the fill already recorded (200), never a second fill"
    )


class ExecutionOut(BaseModel):
    id: int
    order_id: int
    external_id: str
    quantity: DecimalOut
    price: DecimalOut
    venue: str
    executed_at: datetime = Field(description="Trade time: when the venue executed it")
    recorded_by: str = Field(description="Email of who recorded it (or whose key did)")
    recorded_at: datetime = Field(description="Booking time: when it was recorded here")
    kind: Literal["FILL", "BUST"] = Field(
        default="FILL", description="FILL, or BUST: the reversal of the fill it names"
    )
    reverses_execution_id: int | None = Field(
        default=None, description="A BUST's fill (the execution it reverses)"
    )
    reason: str | None = Field(default=None, description="Why a BUST was recorded")
    busted_by: int | None = Field(
        default=None, description="A busted fill's BUST (the execution that reverses it)"
    )


class BustIn(BaseModel):
    """Why a fill is taken back: recorded with the reversing execution."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=4000, examples=["Venue busted the trade"])


class RecordedBust(BaseModel):
    """A bust (the reversing execution), and how far its order is filled now."""

    execution: ExecutionOut
    order: OrderFillState


class OrderFillState(BaseModel):
    """How far an order is filled."""

    id: int
    status: OrderStatus
    quantity: DecimalOut
    filled_quantity: DecimalOut
    remaining_quantity: DecimalOut
    avg_fill_price: DecimalOut | None = Field(description="Of all its fills, 6 decimals")
    version: int


class RecordedFill(BaseModel):
    """A fill, and how far its order is filled now."""

    execution: ExecutionOut
    order: OrderFillState
