from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from tradeops.decimals import DecimalOut, PositiveAmount
from tradeops.instruments.schemas import Symbol

MAX_SNAPSHOTS = 5000

Source = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class SnapshotIn(BaseModel):
    """One price of one instrument at one moment, as a source quoted it. Decimals as strings
    ("192.55") or JSON numbers, in the instrument's currency, > 0, at most 6 decimals."""

    model_config = ConfigDict(extra="forbid")

    symbol: Symbol = Field(description="A known instrument symbol (any case), e.g. AAPL")
    price: PositiveAmount = Field(description='The price (last or mid), e.g. "192.55"')
    bid: PositiveAmount | None = Field(default=None, description="Best bid, if known")
    ask: PositiveAmount | None = Field(default=None, description="Best ask, if known; ≥ bid")
    as_of: AwareDatetime = Field(
        description="When the price held, ISO 8601 with a time zone, e.g. 2026-11-23T10:00:00Z"
    )
    source: Source = Field(description="Who quoted it, 1 to 64 characters, e.g. bloomberg")

    @field_validator("ask")
    @classmethod
    def _ask_not_below_bid(cls, ask: Decimal | None, info: ValidationInfo) -> Decimal | None:
        bid = info.data.get("bid")
        if ask is not None and bid is not None and bid > ask:
            raise ValueError("ask must not be below bid")
        return ask


class SnapshotBatch(BaseModel):
    """Prices to publish, 1 to 5000 in one request; each (symbol, as_of, source) is kept once."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "snapshots": [
                        {
                            "symbol": "AAPL",
                            "price": "192.55",
                            "bid": "192.54",
                            "ask": "192.56",
                            "as_of": "2026-11-23T10:00:00Z",
                            "source": "bloomberg",
                        }
                    ]
                }
            ]
        },
    )

    snapshots: list[SnapshotIn] = Field(min_length=1, max_length=MAX_SNAPSHOTS)


class PublishResult(BaseModel):
    received: int = Field(description="Snapshots in the request")
    stored: int = Field(description="Snapshots new to us, now stored")
    duplicates: int = Field(description="Snapshots we already had (same symbol, as_of, source)")


class SnapshotOut(BaseModel):
    symbol: str
    price: DecimalOut = Field(description="Decimal string in the instrument's currency")
    bid: DecimalOut | None
    ask: DecimalOut | None
    as_of: datetime
    source: str


class SnapshotPage(BaseModel):
    items: list[SnapshotOut]
    next_cursor: str | None = Field(
        description="Pass as `after` to get the next page; null on the last page"
    )
