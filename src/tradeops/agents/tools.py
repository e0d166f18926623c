"""The tools an agent may call: each one argument model, one service call, one result model.

The descriptions are what a language model reads to decide how to call a tool, so they say
the units, that decimals are strings, which statuses exist and what happens next. Every rule
lives in the services the HTTP API calls too; a tool only shapes arguments and results.

There is deliberately no tool to approve or reject an order: deciding is a person's act
(maker-checker), and the services refuse it to any API key besides.

Adding a tool is one argument model, one small function and one `AgentTool` in `TOOLS`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Annotated, Any, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from tradeops.auth.principal import Principal
from tradeops.clients import service as clients
from tradeops.clients.schemas import ClientList, ExternalId
from tradeops.db.uow import UnitOfWork
from tradeops.decimals import PositiveAmount
from tradeops.executions import service as executions
from tradeops.executions.schemas import BustIn, RecordedBust
from tradeops.instruments import service as instruments
from tradeops.instruments.schemas import InstrumentList, Symbol
from tradeops.marketdata import service as market_data
from tradeops.marketdata.schemas import SnapshotOut
from tradeops.orders import service as orders
from tradeops.orders import workflow
from tradeops.orders.router import cancel_results
from tradeops.orders.schemas import (
    CancelResults,
    ClientOrderId,
    OrderCreate,
    OrderFilters,
    OrderOut,
    OrderPage,
    OrderQuery,
    OrderStatus,
    RiskStatus,
    Side,
    TimeInForce,
    check_amends_something,
)
from tradeops.positions import service as positions
from tradeops.positions.schemas import Portfolio
from tradeops.settings import Settings

OrderId = Annotated[
    int,
    Field(
        ge=1, le=2**63 - 1, description="The order's id, as submit_order or list_orders return it"
    ),
]
ExpectedVersion = Annotated[
    int | None,
    Field(
        default=None,
        ge=1,
        description="The order's `version` as you last read it (get_order). If the order has "
        "changed since, the call fails with a stale-version problem and changes nothing.",
    ),
]


class Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ListClients(Arguments):
    desk: str | None = Field(default=None, description="Only clients of this desk code, e.g. EQ-US")


class ListInstruments(Arguments):
    active: bool | None = Field(
        default=None, description="true: only instruments that take orders; omit for all"
    )


class GetPortfolio(Arguments):
    client_id: ExternalId = Field(description="The client's id, e.g. CUST-1001 (list_clients)")


class GetMarketData(Arguments):
    symbol: Symbol = Field(description="Instrument symbol (any case), e.g. AAPL")


class SubmitOrder(OrderCreate):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "client_id": "CUST-1001",
                    "symbol": "AAPL",
                    "side": "BUY",
                    "quantity": "50",
                    "price": "192.55",
                    "client_order_id": "agent-7f3c-0001",
                }
            ]
        }
    )

    quantity: PositiveAmount = Field(
        description='Units to trade, as a decimal string such as "50": > 0, at most 6 '
        "decimals, a multiple of the instrument's lot_size"
    )
    price: PositiveAmount | None = Field(
        default=None,
        description='The limit price, as a decimal string such as "192.55", in the '
        "instrument's currency: > 0, a multiple of its tick_size. Omit it only for a MARKET "
        "order, which you ask for with order_type MARKET.",
    )
    client_order_id: ClientOrderId = Field(
        description="Required: your own unique id for this order (1-64 printable ASCII "
        "characters, no spaces). Calling again with the same client_order_id and the same "
        "order returns the order already recorded instead of a second one."
    )


class GetOrder(Arguments):
    order_id: OrderId | None = Field(
        default=None, description="The order's id; or send client_order_id instead"
    )
    client_order_id: ClientOrderId | None = Field(
        default=None, description="The client_order_id you gave the order, instead of its id"
    )

    @model_validator(mode="after")
    def _one_way_to_name_it(self) -> Self:
        if (self.order_id is None) == (self.client_order_id is None):
            raise ValueError("send exactly one of order_id and client_order_id")
        return self


class ListOrders(Arguments):
    status: OrderStatus | None = Field(default=None, description="Only orders in this status")
    risk_status: RiskStatus | None = Field(
        default=None, description="Only orders whose risk check is in this state, e.g. FAILED"
    )
    client_id: ExternalId | None = Field(default=None, description="Client id, e.g. CUST-1001")
    symbol: Symbol | None = Field(default=None, description="Instrument symbol, e.g. AAPL")
    desk: str | None = Field(default=None, description="Desk code, e.g. EQ-US")
    created_from: datetime | None = Field(
        default=None, description="Created at or after, ISO 8601, e.g. 2026-11-23T00:00:00Z"
    )
    created_to: datetime | None = Field(default=None, description="Created before, ISO 8601")
    after: str | None = Field(default=None, description="`next_cursor` of the previous page")
    limit: int | None = Field(default=None, ge=1, le=500, description="Page size, default 50")


class ReviewOrder(Arguments):
    order_id: OrderId
    recommendation: Literal["APPROVE", "REJECT"] = Field(
        description="What you recommend the human approver decide"
    )
    note: str = Field(
        min_length=1,
        max_length=4000,
        description="Your rationale, in plain words: the approver reads it in the order's history",
    )
    expected_version: ExpectedVersion


@dataclass(frozen=True, slots=True)
class Waiting:
    """A call that returns once an order's version passes `after_version`, or at `seconds`."""

    order_id: int
    after_version: int
    seconds: float

    def done(self, order: dict[str, Any]) -> bool:
        return int(order["version"]) > self.after_version


class WaitForOrderUpdate(Arguments):
    order_id: OrderId
    after_version: int = Field(
        ge=0,
        le=2**31 - 1,
        description="The order's `version` as you last read it: the call returns as soon as "
        "the order's version is greater (0: return at once)",
    )
    timeout_seconds: float = Field(
        default=30,
        gt=0,
        le=60,
        description="Wait at most this long (seconds, up to 60); the order comes back "
        "unchanged if nothing happened. Call again to keep waiting.",
    )

    def waiting(self) -> Waiting:
        return Waiting(self.order_id, self.after_version, self.timeout_seconds)


class CancelOrder(Arguments):
    order_id: OrderId
    reason: str | None = Field(
        default=None, max_length=4000, description="Why, for the order's history"
    )
    expected_version: ExpectedVersion


class BustExecution(Arguments):
    order_id: OrderId
    execution_id: int = Field(
        gt=0, description="The fill to take back, as the order's fills list it"
    )
    reason: str = Field(
        min_length=1,
        max_length=4000,
        description="Why: the venue busted it, or it was booked wrong",
    )


class ReplaceOrder(Arguments):
    order_id: OrderId
    quantity: PositiveAmount | None = Field(
        default=None,
        description='The new order\'s quantity as a decimal string ("80"), a multiple of the '
        "lot_size; omit it to keep the unfilled rest of the old order",
    )
    price: PositiveAmount | None = Field(
        default=None,
        description='The new limit price as a decimal string ("191.50"), a multiple of the '
        "tick_size; omit it to keep the old price (a MARKET order takes none)",
    )
    client_order_id: ClientOrderId | None = Field(
        default=None,
        description="Your id for the new order (unique per submitter); recommended, so you can "
        "find it with get_order if you lose the answer",
    )
    time_in_force: TimeInForce | None = Field(
        default=None,
        description="The new order's time in force: DAY (expires at its desk's next end of "
        "day), GTC (until filled or cancelled), GTD (until expire_at, which you must then send "
        "unless the order is GTD already), IOC or FOK; omit it to keep the old one",
    )
    expire_at: AwareDatetime | None = Field(
        default=None,
        description="A GTD order's new expiry (ISO 8601 with a time zone, in the future); omit "
        "it to keep the old one. A DAY order's replacement expires at its desk's next end of day",
    )
    expected_version: ExpectedVersion

    @model_validator(mode="after")
    def _changes_something(self) -> Self:
        check_amends_something(self)
        return self


class CancelOrders(Arguments):
    client_id: ExternalId | None = Field(default=None, description="Client id, e.g. CUST-1001")
    symbol: Symbol | None = Field(default=None, description="Instrument symbol, e.g. AAPL")
    side: Side | None = Field(default=None, description="BUY or SELL")
    status: OrderStatus | None = Field(
        default=None, description="Only orders in this open status (PENDING, REVIEWED, APPROVED)"
    )
    reason: str | None = Field(
        default=None, max_length=4000, description="Why, for each order's history"
    )


Run = Callable[[UnitOfWork, Principal, Any, Settings], Awaitable[BaseModel]]


@dataclass(frozen=True)
class AgentTool:
    name: str
    title: str
    description: str
    arguments: type[Arguments] | type[OrderCreate]
    result: type[BaseModel]
    run: Run
    read_only: bool = True
    # Calling again with the same arguments changes nothing more (MCP's idempotentHint).
    idempotent: bool = True
    # Its effect cannot be undone (MCP's destructiveHint): an order cancelled stays so.
    destructive: bool = False
    # How the call waits for an order to change (wait_for_order_update): agents.server runs
    # it again, each time in a new transaction, until then.
    waiting: Callable[[Any], Waiting] | None = None

    @cached_property
    def input_schema(self) -> dict[str, Any]:
        return self.arguments.model_json_schema()

    @cached_property
    def output_schema(self) -> dict[str, Any]:
        return self.result.model_json_schema(mode="serialization")


# --- what each tool does: one service call -----------------------------------------------


async def _list_clients(
    uow: UnitOfWork, principal: Principal, args: ListClients, _: Settings
) -> ClientList:
    return ClientList(items=await clients.list_clients(uow, principal, desk=args.desk))


async def _list_instruments(
    uow: UnitOfWork, principal: Principal, args: ListInstruments, _: Settings
) -> InstrumentList:
    items = await instruments.list_instruments(uow, principal, active=args.active)
    return InstrumentList(items=items)


async def _get_portfolio(
    uow: UnitOfWork, principal: Principal, args: GetPortfolio, _: Settings
) -> Portfolio:
    document = await positions.portfolio_json(uow, principal, args.client_id)
    return Portfolio.model_validate_json(document)


async def _get_market_data(
    uow: UnitOfWork, principal: Principal, args: GetMarketData, _: Settings
) -> SnapshotOut:
    return await market_data.latest(uow, principal, args.symbol)


async def _submit_order(
    uow: UnitOfWork, principal: Principal, args: SubmitOrder, settings: Settings
) -> OrderOut:
    submitted = await orders.submit_order(
        uow, principal, args, price_max_decimals=settings.price_max_decimals
    )
    return submitted.order


async def _get_order(
    uow: UnitOfWork, principal: Principal, args: GetOrder, _: Settings
) -> OrderOut:
    if args.client_order_id is not None:
        return await orders.get_order_by_client_order_id(uow, principal, args.client_order_id)
    assert args.order_id is not None  # one of the two, by GetOrder's validation
    return await orders.get_order(uow, principal, args.order_id)


async def _wait_for_order_update(
    uow: UnitOfWork, principal: Principal, args: WaitForOrderUpdate, _: Settings
) -> OrderOut:
    # One look; agents.server looks again when the order's events are announced.
    return await orders.get_order(uow, principal, args.order_id)


async def _list_orders(
    uow: UnitOfWork, principal: Principal, args: ListOrders, settings: Settings
) -> OrderPage:
    filters = OrderFilters(
        status=args.status,
        risk_status=args.risk_status,
        client_id=args.client_id,
        symbol=args.symbol,
        desk=args.desk,
        created_from=args.created_from,
        created_to=args.created_to,
    )
    wanted = OrderQuery(args.limit or settings.page_size_default, args.after, filters)
    return await orders.list_orders(uow, principal, wanted)


async def _review_order(
    uow: UnitOfWork, principal: Principal, args: ReviewOrder, _: Settings
) -> OrderOut:
    decision = workflow.Decision(
        args.order_id,
        workflow.REVIEW,
        args.expected_version,
        note=args.note,
        recommendation=args.recommendation,
    )
    return await workflow.transition_order(uow, principal, decision)


async def _cancel_order(
    uow: UnitOfWork, principal: Principal, args: CancelOrder, _: Settings
) -> OrderOut:
    decision = workflow.Decision(
        args.order_id, workflow.CANCEL, args.expected_version, reason=args.reason
    )
    return await workflow.transition_order(uow, principal, decision)


async def _bust_execution(
    uow: UnitOfWork, principal: Principal, args: BustExecution, _: Settings
) -> RecordedBust:
    bust = BustIn(reason=args.reason)
    return await executions.bust_execution(uow, principal, args.order_id, args.execution_id, bust)


async def _replace_order(
    uow: UnitOfWork, principal: Principal, args: ReplaceOrder, settings: Settings
) -> OrderOut:
    amendment = workflow.Amendment(
        args.order_id,
        quantity=args.quantity,
        price=args.price,
        client_order_id=args.client_order_id,
        expected_version=args.expected_version,
        expire_at=args.expire_at,
        time_in_force=args.time_in_force,
    )
    return await workflow.replace_order(
        uow, principal, amendment, price_max_decimals=settings.price_max_decimals
    )


async def _cancel_orders(
    uow: UnitOfWork, principal: Principal, args: CancelOrders, _: Settings
) -> CancelResults:
    """The key owner's own orders only: an agent never sweeps its colleagues' orders."""
    wanted = OrderFilters(
        status=args.status,
        client_id=args.client_id,
        symbol=args.symbol,
        side=args.side,
        made_by=principal.user_id,
    )
    done = await workflow.cancel_orders(uow, principal, wanted, reason=args.reason)
    return cancel_results(done, uow.request_id, lambda _: "/mcp/tools/cancel_orders")


# --- the catalogue ---------------------------------------------------------------------------

_ORDER_FIELDS = (
    "An order has: id; status, one of PENDING (submitted, waiting for a review), REVIEWED "
    "(waiting for a human approver's decision), APPROVED (approved, may now be filled), "
    "PARTIALLY_FILLED (some filled, the rest may still fill), FILLED (fully filled), REJECTED "
    "(an approver refused it; final), CANCELLED (final), REPLACED (amended with replace_order; "
    "final: replaced_by names the new order, which carries on) and EXPIRED (its time in force "
    "ran out before it was filled; final, it keeps any fills: submit a new order to go on); "
    "time_in_force and expire_at (when it expires unless filled first; null: no expiry time); "
    "replaces and replaced_by (the order it amended, the order that amended it); risk_status "
    "(PENDING, PASSED, FAILED) and risk_reasons from the pre-trade risk check; quantity, "
    "price, filled_quantity and avg_fill_price as decimal strings (price in the instrument's "
    "currency, null for MARKET orders); created_by, reviewed_by, approved_by; "
    "approvals_required (approvals from distinct people it needs, by its desk's policy) and "
    "approvals (who approved, when, with what note; people approve, agents never do); "
    "and version, which changes on every step (send it back as expected_version)."
)

TOOLS: tuple[AgentTool, ...] = (
    AgentTool(
        name="list_clients",
        title="List clients",
        description="List the bank's clients on the desks your key covers, by client_id (e.g. "
        "CUST-1001), with name, desk and status. Only ACTIVE clients take new orders. Use a "
        "client_id from here in submit_order. Needs the scope clients:read.",
        arguments=ListClients,
        result=ClientList,
        run=_list_clients,
    ),
    AgentTool(
        name="list_instruments",
        title="List instruments",
        description="List tradable instruments by symbol, with currency, lot_size and "
        "tick_size (decimal strings), restricted and active. An order's quantity must be a "
        "multiple of lot_size and its limit price a multiple of tick_size; only active "
        "instruments take orders. Any key may call it.",
        arguments=ListInstruments,
        result=InstrumentList,
        run=_list_instruments,
    ),
    AgentTool(
        name="get_portfolio",
        title="Client portfolio",
        description="A client's positions valued at the latest market prices: per symbol the "
        "signed quantity (negative = short), avg_cost, last_price, market_value, "
        "unrealized_pnl and realized_pnl, and totals per currency. All amounts are decimal "
        "strings in the instrument's currency; values are null where an instrument has no "
        "price yet (priced: false). A not-found problem for a client outside your desks. "
        "Needs the scope positions:read.",
        arguments=GetPortfolio,
        result=Portfolio,
        run=_get_portfolio,
    ),
    AgentTool(
        name="get_market_data",
        title="Latest price",
        description="The latest price of an instrument: price, bid and ask as decimal strings "
        "in the instrument's currency (bid and ask null when the source did not quote them), "
        "as_of (ISO 8601, UTC) and source. A not-found problem when the symbol is unknown or "
        "has no price yet. Any key may call it.",
        arguments=GetMarketData,
        result=SnapshotOut,
        run=_get_market_data,
    ),
    AgentTool(
        name="submit_order",
        title="Submit an order",
        description="Submit a trade order for a client of your desks. quantity and price are "
        'decimal strings ("50", "192.55"): quantity > 0 in units of the instrument, a multiple '
        "of its lot_size; price is the limit price in the instrument's currency, a multiple of "
        "its tick_size. order_type is LIMIT unless you send MARKET: a LIMIT order needs a "
        "price; to trade at market send order_type MARKET and no price. The order is recorded "
        "with status PENDING and risk_status PENDING; a background pre-trade risk check then sets "
        "risk_status to PASSED or FAILED. Nothing trades yet: the order waits for a review "
        "(review_order) and then for a human approver, who approves or rejects it; no agent "
        "can. If you do not know whether a submit went through (a timeout, a lost "
        "connection), call submit_order again with the same client_order_id and the same "
        "order: you get the order already recorded, never a duplicate. The same "
        "client_order_id with a different order is refused (duplicate-client-order-id). "
        "Needs the scope orders:write. " + _ORDER_FIELDS,
        arguments=SubmitOrder,
        result=OrderOut,
        run=_submit_order,
        read_only=False,
    ),
    AgentTool(
        name="get_order",
        title="Get an order",
        description="One order as it is now, by order_id, or by the client_order_id you gave "
        "it (your own orders). Orders of desks your key does not cover are not found. Needs "
        "the scope orders:read. " + _ORDER_FIELDS,
        arguments=GetOrder,
        result=OrderOut,
        run=_get_order,
    ),
    AgentTool(
        name="list_orders",
        title="List orders",
        description="Orders of your desks, newest first, one page at a time: pass next_cursor "
        "as `after` for the next page (next_cursor is null on the last page). Optional "
        "filters: status, client_id, symbol, desk, created_from (inclusive) and created_to "
        "(exclusive) as ISO 8601 timestamps; limit 1-500, default 50. Needs the scope "
        "orders:read. " + _ORDER_FIELDS,
        arguments=ListOrders,
        result=OrderPage,
        run=_list_orders,
    ),
    AgentTool(
        name="review_order",
        title="Review an order",
        description="Record your review of a PENDING order: your recommendation (APPROVE or "
        "REJECT) and your rationale (note). The order moves to REVIEWED and your note and "
        "recommendation are stored in its history for the approver. Your recommendation "
        "does not decide anything: the order then waits for a human approver to approve or "
        "reject it. Only a PENDING order can be reviewed, once; reviewing it again fails with "
        "an illegal-transition problem. Needs the scope orders:review. Returns the order.",
        arguments=ReviewOrder,
        result=OrderOut,
        run=_review_order,
        read_only=False,
        # Again with the same arguments: refused (the order is no longer PENDING), nothing
        # more changes; a review adds to the history and undoes nothing, so not destructive.
        idempotent=True,
    ),
    AgentTool(
        name="cancel_order",
        title="Cancel an order",
        description="Cancel an order that is PENDING, REVIEWED or APPROVED; it becomes "
        "CANCELLED for good. An order that is filled (even partly), rejected, replaced, expired "
        "or already cancelled cannot be cancelled. Only the order's maker (the user whose key "
        "submitted it) or an approver of its desk may cancel it. Optional reason, kept in the "
        "order's history. Needs the scope orders:write. Returns the order.",
        arguments=CancelOrder,
        result=OrderOut,
        run=_cancel_order,
        read_only=False,
        # Again with the same arguments: refused (illegal-transition), nothing more changes.
        idempotent=True,
        destructive=True,
    ),
    AgentTool(
        name="wait_for_order_update",
        title="Wait for an order to change",
        description="Wait until an order changes, then return it: as soon as its version is "
        "greater than after_version (its risk check finished, a person approved or rejected "
        "it, it was filled, cancelled, replaced or expired), or after timeout_seconds (at most "
        "60) with the order as it is. Use it after submit_order or review_order instead of calling "
        "get_order in a loop: pass the version you last saw; when it returns with the same "
        "version, nothing happened yet: call it again. Needs the scope orders:read. "
        + _ORDER_FIELDS,
        arguments=WaitForOrderUpdate,
        result=OrderOut,
        run=_wait_for_order_update,
        waiting=WaitForOrderUpdate.waiting,
    ),
    AgentTool(
        name="replace_order",
        title="Amend an order",
        description="Amend an open order of yours (PENDING, REVIEWED, APPROVED or "
        "PARTIALLY_FILLED): change its quantity, price, client_order_id, time_in_force or a GTD "
        "order's expire_at (time_in_force GTD needs expire_at; DAY, GTC, IOC and FOK take "
        "none). The old order "
        "becomes REPLACED (replaced_by names the new one; a partly filled order keeps its "
        "fills) and a new order (replaces names the old one; same client, symbol and side) "
        "starts again at PENDING with a new risk check: it needs a review and a human "
        "approver's decision again. Omitting quantity keeps the unfilled rest. Only the "
        "order's maker (you, through your key) may amend it. Send expected_version from "
        "get_order. Needs the scope orders:write. Returns the NEW order. " + _ORDER_FIELDS,
        arguments=ReplaceOrder,
        result=OrderOut,
        run=_replace_order,
        read_only=False,
        # Again with the same expected_version: refused (stale-version), nothing more
        # changes; the old order is REPLACED for good.
        idempotent=True,
        destructive=True,
    ),
    AgentTool(
        name="cancel_orders",
        title="Cancel many orders",
        description="Cancel every open order of yours (submitted with your key's owner) that "
        "matches the optional filters client_id, symbol, side and status. Returns one result "
        "per order: status 200 with the cancelled order, or 409 with a problem (e.g. a "
        "PARTIALLY_FILLED order cannot be cancelled; amend it with replace_order instead). One "
        "refusal never stops the others. At most 500 a call: call again while more is true. "
        "Needs the scope orders:write.",
        arguments=CancelOrders,
        result=CancelResults,
        run=_cancel_orders,
        read_only=False,
        # Again: nothing open is left to cancel; cancelled orders stay cancelled.
        idempotent=True,
        destructive=True,
    ),
    AgentTool(
        name="bust_execution",
        title="Take a fill back (bust)",
        description="Take back a fill of an order (the venue busted the trade, or it was "
        "booked wrong), with a reason: a reversing execution is recorded and linked to the "
        "fill, which is never changed or deleted; the order's filled quantity, average price "
        "and status, and the client's position and realized P&L, go back to what the other "
        "fills make them. A fill is busted once. To correct a fill: bust it, then the venue "
        "connector records the corrected one. Needs the scope executions:write "
        "(an admin's key). Returns the bust and the order's fill state.",
        arguments=BustExecution,
        result=RecordedBust,
        run=_bust_execution,
        read_only=False,
        # Again: refused (not-bustable), nothing more changes; a bust cannot be undone.
        idempotent=True,
        destructive=True,
    ),
)
TOOLS_BY_NAME = {tool.name: tool for tool in TOOLS}
