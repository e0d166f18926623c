from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tradeops.decimals import DecimalOut, PositiveAmount

Symbol = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_upper=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-/]{0,31}$"
    ),
]
Currency = Annotated[str, StringConstraints(to_upper=True, pattern=r"^[A-Za-z]{3}$")]
AssetClass = Literal["EQUITY", "ETF", "BOND", "FX", "FUTURE", "OPTION"]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class InstrumentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    symbol: Symbol = Field(examples=["AAPL"])
    name: Name = Field(examples=["Apple Inc."])
    asset_class: AssetClass = "EQUITY"
    currency: Currency = Field(examples=["USD"], description="ISO 4217 code")
    lot_size: PositiveAmount = Field(description="Order quantities must be a multiple of this")
    tick_size: PositiveAmount = Field(description="Limit prices must be a multiple of this")
    restricted: bool = False
    active: bool = True


class InstrumentUpdate(BaseModel):
    """Fields to change; absent fields keep their value."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    lot_size: PositiveAmount | None = None
    tick_size: PositiveAmount | None = None
    restricted: bool | None = None
    active: bool | None = None


class InstrumentOut(BaseModel):
    symbol: str
    name: str
    asset_class: str
    currency: str
    lot_size: DecimalOut
    tick_size: DecimalOut
    restricted: bool
    active: bool
    created_at: datetime
    updated_at: datetime


class InstrumentList(BaseModel):
    items: list[InstrumentOut]
