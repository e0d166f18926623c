from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from tradeops.decimals import DecimalOut

_QUANTITY = "Signed: positive long, negative short, 0 flat (closed; kept for its realized P&L)"
_AVG_COST = (
    "Cost per unit of the open quantity (cost_basis / quantity, 10 decimals); null when flat"
)
_COST_BASIS = (
    "What the open quantity cost, in the instrument's currency, signed like the quantity "
    "(a short's is what it was sold for, negated)"
)
_REALIZED = "P&L realized by reducing trades so far (average-cost method)"


class PositionOut(BaseModel):
    client_id: str
    desk: str
    symbol: str
    currency: str
    quantity: DecimalOut = Field(description=_QUANTITY)
    avg_cost: DecimalOut | None = Field(description=_AVG_COST)
    cost_basis: DecimalOut = Field(description=_COST_BASIS)
    realized_pnl: DecimalOut = Field(description=_REALIZED)
    version: int = Field(description="Goes up by one with each fill")
    updated_at: datetime


class PositionPage(BaseModel):
    items: list[PositionOut]
    next_cursor: str | None = Field(
        description="Pass as `after` to get the next page; null on the last page"
    )


class PortfolioPosition(BaseModel):
    symbol: str
    currency: str
    quantity: DecimalOut = Field(description=_QUANTITY)
    avg_cost: DecimalOut | None = Field(description=_AVG_COST)
    cost_basis: DecimalOut = Field(description=_COST_BASIS)
    priced: bool = Field(
        description="false: the instrument has no market price yet, so last_price, "
        "market_value and unrealized_pnl are null (a flat position is still worth 0)"
    )
    last_price: DecimalOut | None = Field(description="Latest market snapshot's price")
    price_as_of: datetime | None = Field(description="When that price held")
    market_value: DecimalOut | None = Field(description="quantity * last_price")
    unrealized_pnl: DecimalOut | None = Field(
        description="market_value - cost_basis, i.e. (last_price - avg_cost) * quantity, exact"
    )
    realized_pnl: DecimalOut = Field(description=_REALIZED)


class PortfolioTotal(BaseModel):
    """The sums of one currency's positions: amounts in different currencies are not added."""

    currency: str
    positions: int
    unpriced_positions: int = Field(description="Open positions without a market price")
    market_value: DecimalOut | None = Field(
        description="null when an open position of this currency has no price"
    )
    cost_basis: DecimalOut
    unrealized_pnl: DecimalOut | None = Field(
        description="null when an open position of this currency has no price"
    )
    realized_pnl: DecimalOut


class Portfolio(BaseModel):
    client_id: str
    desk: str
    as_of: datetime = Field(description="When it was valued (the request's transaction time)")
    positions: list[PortfolioPosition] = Field(description="By symbol, flat positions included")
    totals: list[PortfolioTotal] = Field(description="One per currency held, by currency")
