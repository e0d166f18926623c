from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tradeops.clients.schemas import ExternalId
from tradeops.decimals import DecimalOut, PositiveAmount

Percent = Annotated[Decimal, Field(gt=0, le=100, max_digits=7, decimal_places=4)]


class RiskLimitIn(BaseModel):
    """The limits of ONE desk (give `desk`) or ONE client (give `client_id`), replaced as a
    whole: a limit left out or null means "no limit" (the fat-finger band then falls back
    to the desk's, else the default). Decimals as strings or numbers."""

    model_config = ConfigDict(extra="forbid")

    desk: str | None = Field(default=None, examples=["EQ-US"], description="A desk code")
    client_id: ExternalId | None = Field(
        default=None, examples=["CUST-1001"], description="A client, on top of its desk's limits"
    )
    max_order_notional: PositiveAmount | None = Field(
        default=None,
        examples=["1000000"],
        description="Largest order value (quantity x price) in the order's currency",
    )
    max_position: PositiveAmount | None = Field(
        default=None,
        examples=["50000"],
        description="Largest position (long or short) in one instrument, in units",
    )
    fat_finger_pct: Percent | None = Field(
        default=None,
        examples=["10"],
        description="How far (in %) a limit price may be from the last market price",
    )

    @model_validator(mode="after")
    def _one_holder(self) -> RiskLimitIn:
        if (self.desk is None) == (self.client_id is None):
            raise ValueError("give exactly one of desk or client_id")
        return self


class RiskLimitOut(BaseModel):
    desk: str
    client_id: str | None
    max_order_notional: DecimalOut | None
    max_position: DecimalOut | None
    fat_finger_pct: DecimalOut | None
    updated_by: int
    updated_at: datetime


class RiskLimitList(BaseModel):
    items: list[RiskLimitOut]
    default_fat_finger_pct: DecimalOut = Field(
        description="The band used where neither the desk nor the client sets one"
    )
