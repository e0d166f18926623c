"""What the pages show, read through the same services as the API: no rule is restated here.

A view gathers an order with its client, instrument, latest price and history, and for each
step of the workflow whether the person may take it now, or why not (workflow.refusal).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tradeops.auth import users
from tradeops.auth.permissions import Action, is_allowed
from tradeops.auth.principal import Principal, Role
from tradeops.clients import service as clients
from tradeops.clients.schemas import ClientOut
from tradeops.db.uow import UnitOfWork
from tradeops.desks import service as desks
from tradeops.executions import service as executions
from tradeops.executions.schemas import ExecutionOut
from tradeops.instruments import service as instruments
from tradeops.instruments.schemas import InstrumentOut
from tradeops.marketdata import service as marketdata
from tradeops.marketdata.schemas import SnapshotOut
from tradeops.orders import service as orders
from tradeops.orders import workflow
from tradeops.orders.schemas import OrderFilters, OrderOut, OrderPage, OrderQuery
from tradeops.orders.states import OrderStatus, RiskStatus
from tradeops.orders.workflow import OrderEventOut
from tradeops.positions import service as positions
from tradeops.positions.accounting import signed_quantity

AWAITING_DECISION = ("PENDING", "REVIEWED")
# The queue never lists a REPLACED order: its replacement stands for it (and links to it).
QUEUED_STATUSES = tuple(s.value for s in OrderStatus if s is not OrderStatus.REPLACED)
QUEUE_PAGE_SIZE = 50
_ACTOR = re.compile(r"^user:(\d+)(?:/key:(\d+))?$", re.ASCII)


# --- the queue ----------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueFilters:
    """The queue's filters, as the form sends them ("" for any). `status` "awaiting" means
    PENDING or REVIEWED: what still needs a person."""

    status: str = ""
    desk: str = ""
    risk_status: str = ""
    symbol: str = ""
    client_id: str = ""
    after: str = ""

    def as_query(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v and k != "after"}


def default_status(principal: Principal) -> str:
    """Approvers and risk start from what awaits a decision; traders from all their orders."""
    return "" if principal.role in (Role.TRADER, Role.AGENT) else "awaiting"


def only_own_orders(principal: Principal) -> bool:
    """A trader's list is their own orders (colleagues' orders stay readable by id)."""
    return principal.role in (Role.TRADER, Role.AGENT)


async def queue(uow: UnitOfWork, principal: Principal, filters: QueueFilters) -> OrderPage:
    status = filters.status or None
    wanted = OrderFilters(
        status=None if status in (None, "awaiting") else OrderStatus(status),
        statuses=AWAITING_DECISION if status == "awaiting" else QUEUED_STATUSES,
        risk_status=RiskStatus(filters.risk_status) if filters.risk_status else None,
        made_by=principal.user_id if only_own_orders(principal) else None,
        desk=filters.desk or None,
        symbol=filters.symbol or None,
        client_id=filters.client_id or None,
    )
    page = OrderQuery(QUEUE_PAGE_SIZE, filters.after or None, wanted)
    return await orders.list_orders(uow, principal, page)


async def tick_sizes(uow: UnitOfWork, principal: Principal, page: OrderPage) -> dict[str, Decimal]:
    """The tick size of each instrument on the page: its prices are written to that tick."""
    return await instruments.tick_sizes(uow, principal, {o.symbol for o in page.items})


async def desk_codes(uow: UnitOfWork, principal: Principal) -> list[str]:
    """The desks a person may filter on: the ones they cover."""
    codes = [d.code for d in await desks.list_desks(uow, principal)]
    if principal.all_desks or not codes:
        return codes
    ids = await desks.desk_ids_by_code(uow, codes)
    return [code for code in codes if ids[code] in principal.desk_ids]


# --- one order ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EventView:
    seq: int
    type: str
    actor: str
    at: Any
    payload: dict[str, Any]


@dataclass(frozen=True)
class Recommendation:
    """An agent's (or reviewer's) advice to the approver, from the order's REVIEWED event."""

    by: str
    recommendation: str | None
    note: str | None


@dataclass(frozen=True)
class ActionView:
    """A workflow step the person's role may take: enabled, or disabled with the reason."""

    name: str
    refused: str | None


@dataclass(frozen=True)
class PositionImpact:
    """The client's position in the instrument now, and once the order's open quantity fills."""

    current: Decimal
    after: Decimal


async def position_impact(
    uow: UnitOfWork, principal: Principal, order: OrderOut
) -> PositionImpact | None:
    """None when the person may not read positions (their role or key does not allow it)."""
    if not is_allowed(principal, Action.READ_POSITIONS):
        return None
    page = await positions.list_positions(
        uow, principal, limit=1, client_id=order.client_id, symbol=order.symbol
    )
    current = page.items[0].quantity if page.items else Decimal(0)
    open_quantity = order.quantity - order.filled_quantity
    if order.status in ("REJECTED", "CANCELLED", "FILLED", "REPLACED", "EXPIRED"):
        open_quantity = Decimal(0)
    after = current + signed_quantity(order.side, open_quantity)
    return PositionImpact(current=current, after=after)


@dataclass
class OrderView:
    order: OrderOut
    client: ClientOut
    instrument: InstrumentOut
    latest: SnapshotOut | None
    notional: Decimal | None
    notional_basis: str | None
    history: list[EventView]
    recommendation: Recommendation | None
    actions: list[ActionView]
    read_only: bool  # the role takes no step of the workflow (risk, admin)
    position: PositionImpact | None = field(default=None)
    # Its fills and busts, each linking the other (whoever reads the order reads them).
    executions: list[ExecutionOut] = field(default_factory=list)

    def action(self, name: str) -> ActionView | None:
        return next((a for a in self.actions if a.name == name), None)


def notional(order: OrderOut, latest: SnapshotOut | None) -> tuple[Decimal | None, str | None]:
    """Quantity times the limit price, or the latest price for a market order (None if none)."""
    if order.price is not None:
        return order.quantity * order.price, "limit price"
    if latest is not None:
        return order.quantity * latest.price, "latest price"
    return None, None


async def latest_price(uow: UnitOfWork, principal: Principal, symbol: str) -> SnapshotOut | None:
    try:
        return await marketdata.latest(uow, principal, symbol)
    except marketdata.MarketDataNotFound:
        return None


async def _history(uow: UnitOfWork, principal: Principal, order_id: int) -> list[EventView]:
    events = await workflow.order_history(uow, principal, order_id)
    matches = {e.actor: _ACTOR.match(e.actor) for e in events}
    emails = await users.emails_of(uow, {int(m.group(1)) for m in matches.values() if m})
    return [_event_view(e, matches[e.actor], emails) for e in events]


def _event_view(
    event: OrderEventOut, actor: re.Match[str] | None, emails: dict[int, str]
) -> EventView:
    who = event.actor
    if actor is not None:
        who = emails.get(int(actor.group(1)), who)
        if actor.group(2):
            who = f"{who} (API key {actor.group(2)})"
    return EventView(event.seq, event.type, who, event.at, event.payload)


def _recommendation(history: list[EventView]) -> Recommendation | None:
    review = next((e for e in reversed(history) if e.type == "REVIEWED"), None)
    if review is None:
        return None
    return Recommendation(
        by=review.actor,
        recommendation=review.payload.get("recommendation"),
        note=review.payload.get("note"),
    )


def _actions(principal: Principal, order: OrderOut, refusals: dict[str, Any]) -> list[ActionView]:
    """The steps to offer: those the role may ever take and the order's status allows, plus
    approval of an order not yet reviewed, shown disabled so the approver sees why."""
    shown = []
    for transition in workflow.TRANSITIONS:
        refused = refusals[transition.name]
        if not is_allowed(principal, transition.action):
            continue
        waiting_for_review = transition is workflow.APPROVE and order.status == "PENDING"
        if isinstance(refused, workflow.IllegalTransition) and not waiting_for_review:
            continue
        shown.append(ActionView(transition.name, refused.detail if refused else None))
    return shown


async def order_view(uow: UnitOfWork, principal: Principal, order_id: int) -> OrderView:
    order = await orders.get_order(uow, principal, order_id)
    latest = await latest_price(uow, principal, order.symbol)
    history = await _history(uow, principal, order_id)
    value, basis = notional(order, latest)
    return OrderView(
        order=order,
        client=await clients.get_client(uow, principal, order.client_id),
        instrument=await instruments.get_instrument(uow, principal, order.symbol),
        latest=latest,
        notional=value,
        notional_basis=basis,
        history=history,
        recommendation=_recommendation(history),
        actions=_actions(
            principal, order, await workflow.transition_refusals(uow, principal, order_id)
        ),
        read_only=not any(is_allowed(principal, t.action) for t in workflow.TRANSITIONS),
        position=await position_impact(uow, principal, order),
        executions=await executions.list_executions(uow, principal, order_id),
    )


@dataclass(frozen=True)
class Confirmation:
    """A large approval waiting for the approver's second submit, with the note they wrote
    and the version they decided on (so a change since is still refused on the second)."""

    threshold: Decimal
    note: str | None
    version: int | None


def needs_confirming(view: OrderView, threshold: Decimal) -> bool:
    """Above the threshold, or of unknown size (a market order with no price yet)."""
    return view.notional is None or view.notional > threshold


def may_verify_audit(principal: Principal) -> bool:
    return is_allowed(principal, Action.VERIFY_AUDIT)
