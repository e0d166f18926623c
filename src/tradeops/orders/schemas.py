from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from tradeops.clients.schemas import ExternalId
from tradeops.decimals import DecimalOut, PositiveAmount
from tradeops.instruments.schemas import Symbol
from tradeops.orders import states


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


Side = Annotated[states.Side, BeforeValidator(_upper)]
OrderType = Annotated[Literal["LIMIT", "MARKET"], BeforeValidator(_upper)]
TimeInForce = Annotated[Literal["DAY", "GTC", "GTD", "IOC", "FOK"], BeforeValidator(_upper)]
OrderStatus = states.OrderStatus
RiskStatus = states.RiskStatus
ClientOrderId = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7E]{1,64}$")]
GTD_NEEDS_EXPIRE_AT = "a GTD order needs expire_at, and only a GTD order takes one"
LIMIT_NEEDS_PRICE = "a LIMIT order needs a price; send order_type MARKET to trade at market"


class OrderCreate(BaseModel):
    """A new order. Quantities and prices are decimals: send strings ("192.55") or JSON numbers."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "client_id": "CUST-1001",
                    "symbol": "AAPL",
                    "side": "BUY",
                    "quantity": 50,
                    "price": 192.55,
                }
            ]
        },
    )

    client_id: ExternalId = Field(description="The client's external id, e.g. CUST-1001")
    symbol: Symbol = Field(description="A known, active instrument symbol, e.g. AAPL")
    side: Side = Field(description="BUY or SELL (any case)")
    quantity: PositiveAmount = Field(
        description="Units to trade, > 0 and a multiple of the instrument's lot size"
    )
    price: PositiveAmount | None = Field(
        default=None,
        description="Limit price in the instrument's currency, a multiple of its tick size; "
        "omit for a MARKET order",
    )
    # A MARKET order is always asked for by name: a price left out by mistake must never
    # trade at whatever the market pays.
    order_type: OrderType = Field(
        default="LIMIT",
        description="LIMIT (the default, needs a price) or MARKET (send it explicitly, without "
        "a price, to trade at market)",
    )
    time_in_force: TimeInForce = Field(
        default="DAY",
        description="DAY (the default: expires at the desk's next end of day), GTC (until "
        "filled or cancelled), GTD (until `expire_at`), IOC or FOK",
    )
    expire_at: AwareDatetime | None = Field(
        default=None,
        description="GTD only, and required with it: when the order expires if not filled, "
        "ISO 8601 with a time zone, in the future",
    )
    client_order_id: ClientOrderId | None = Field(
        default=None,
        description="Your own id for this order, unique per submitter; a repeat answers 409 "
        "with the existing order's id",
    )

    @model_validator(mode="after")
    def _price_matches_type(self) -> Self:
        if self.order_type == "LIMIT" and self.price is None:
            raise ValueError(LIMIT_NEEDS_PRICE)
        if self.order_type == "MARKET" and self.price is not None:
            raise ValueError("a MARKET order takes no price")
        if (self.time_in_force == "GTD") != (self.expire_at is not None):
            raise ValueError(GTD_NEEDS_EXPIRE_AT)
        return self


class ApprovalOut(BaseModel):
    approved_by: str = Field(description="The approver's email")
    approved_at: datetime
    note: str | None


class OrderOut(BaseModel):
    id: int
    status: OrderStatus
    risk_status: RiskStatus
    risk_reasons: list[Any]
    client_id: str
    desk: str
    symbol: str
    side: str
    order_type: str
    time_in_force: str
    expire_at: datetime | None = Field(
        description="When it expires unless filled first (DAY: the desk's end of day; GTD: as "
        "asked; null: GTC, IOC, FOK, and DAY orders from before expiry existed)"
    )
    quantity: DecimalOut
    price: DecimalOut | None
    currency: str
    filled_quantity: DecimalOut
    avg_fill_price: DecimalOut | None
    client_order_id: str | None
    created_by: str
    reviewed_by: str | None
    approved_by: str | None = Field(description="Who gave the last approval, once APPROVED")
    approvals_required: int = Field(
        description="Approvals from distinct people the order needs: its desk's approval "
        "policy when it was submitted"
    )
    approvals: list[ApprovalOut] = Field(description="The approvals given so far, oldest first")
    replaces: int | None = Field(
        default=None, description="The order this one amended (it is REPLACED), if any"
    )
    replaced_by: int | None = Field(
        default=None, description="The order that amended this one (status REPLACED), if any"
    )
    version: int = Field(description="Send it back as If-Match to change the order")
    created_at: datetime
    updated_at: datetime


AMENDABLE = ("quantity", "price", "client_order_id", "time_in_force", "expire_at")


def check_amends_something(amendment: BaseModel) -> None:
    """An amendment (over HTTP or MCP) changes at least one of the AMENDABLE terms."""
    if all(getattr(amendment, name) is None for name in AMENDABLE):
        raise ValueError(f"send at least one of {', '.join(AMENDABLE)}")


class OrderAmendment(BaseModel):
    """What changes when an open order is replaced; whatever is left out stays as it was."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"quantity": "80", "price": "191.50"}]},
    )

    quantity: PositiveAmount | None = Field(
        default=None,
        description="The new order's quantity, a multiple of the lot size; omitted: the old "
        "order's unfilled rest (its quantity less what is filled)",
    )
    price: PositiveAmount | None = Field(
        default=None, description="The new limit price (LIMIT orders only); omitted: unchanged"
    )
    client_order_id: ClientOrderId | None = Field(
        default=None,
        description="Your id for the new order, unique per submitter; omitted: none (the old "
        "order keeps its own)",
    )
    time_in_force: TimeInForce | None = Field(
        default=None,
        description="The new order's time in force (DAY, GTC, GTD, IOC or FOK), as at "
        "submission: GTD needs `expire_at` (unless the old order is GTD too: then its expiry "
        "stays), the others take none; omitted: unchanged",
    )
    expire_at: AwareDatetime | None = Field(
        default=None,
        description="A GTD order's new expiry, in the future; omitted: unchanged. A DAY "
        "replacement expires at its desk's next end of day after the amendment",
    )
    expected_version: int | None = Field(default=None, ge=1, description="Instead of If-Match")

    @model_validator(mode="after")
    def _changes_something(self) -> Self:
        check_amends_something(self)
        return self


class OrderPage(BaseModel):
    items: list[OrderOut]
    next_cursor: str | None = Field(
        description="Pass as `after` to get the next page; null on the last page"
    )


@dataclass(frozen=True, slots=True)
class OrderFilters:
    """Which orders a list shows; None: any."""

    status: OrderStatus | None = None
    statuses: tuple[str, ...] | None = None
    risk_status: RiskStatus | None = None
    made_by: int | None = None
    client_id: str | None = None
    symbol: str | None = None
    side: states.Side | None = None
    client_order_id: str | None = None
    desk: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None

    @property
    def by_created(self) -> bool:
        """A created range lists newest first by (created_at, id), and its cursor holds both
        (orders.repository.filtered_orders says why); any other list by id."""
        return self.created_from is not None or self.created_to is not None


@dataclass(frozen=True, slots=True)
class OrderQuery:
    """One page of orders: at most `limit`, after the cursor `after` (a next_cursor)."""

    limit: int
    after: str | None = None
    filters: OrderFilters = field(default_factory=OrderFilters)


class CancelResult(BaseModel):
    """One order of a bulk cancel: 200 with the cancelled order, or 403/409 with why not."""

    id: int
    status: int = Field(description="200 cancelled, 403 not yours to cancel, 409 not cancellable")
    order: OrderOut | None = None
    problem: dict[str, Any] | None = Field(
        default=None, description="An RFC 9457 problem, as the single cancel would answer"
    )


class CancelResults(BaseModel):
    results: list[CancelResult] = Field(description="One per open order matched, newest first")
    more: bool = Field(
        description="true: more open orders matched than one call handles; call again"
    )
