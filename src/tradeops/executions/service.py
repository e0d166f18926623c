"""Recording fills: each is one transaction that records the execution, moves the order to
PARTIALLY_FILLED or FILLED, appends its history and audit events and books the position.

    lock the order ─▶ same external id already recorded? ─▶ answer that fill (a resend)
                   ─▶ fillable? lot size? within the limit? no overfill?
                   ─▶ execution + order + history + audit (one statement) ─▶ position

Every rule here is also in PostgreSQL: a trigger on executions (status, lot size, limit
price) and the orders CHECK filled_quantity <= quantity (overfill).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import orjson

from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.db.uow import UnitOfWork
from tradeops.decimals import EXACT, divide_half_even, plain
from tradeops.errors import Conflict, InvalidRequest
from tradeops.executions import repository as repo
from tradeops.executions.repository import FillContext, FillOrder
from tradeops.executions.schemas import ExecutionIn, ExecutionOut, OrderFillState, RecordedFill
from tradeops.orders.repository import lock_order
from tradeops.orders.service import OrderNotFound, get_order
from tradeops.orders.states import OrderStatus, Side
from tradeops.positions.accounting import signed_quantity
from tradeops.positions.service import PositionFill, book_fill

FILLABLE = frozenset({OrderStatus.APPROVED, OrderStatus.PARTIALLY_FILLED})
AVG_FILL_PRICE_PLACES = 6  # orders.avg_fill_price numeric(20,6)


class OrderNotFillable(Conflict):
    slug = "order-not-fillable"
    title = "The order does not take fills in its current status"


class ExecutionConflict(Conflict):
    slug = "execution-conflict"
    title = "This external_id was already recorded for another fill"


class Overfill(InvalidRequest):
    slug = "overfill"
    title = "The fill is larger than what is left of the order"


class FillOutsideLimit(InvalidRequest):
    slug = "fill-outside-limit"
    title = "The fill price is through the order's limit price"


@dataclass(frozen=True)
class FillOutcome:
    fill: RecordedFill
    created: bool  # False: the same fill was sent again and is answered as recorded


async def record_execution(
    uow: UnitOfWork, principal: Principal, order_id: int, fill: ExecutionIn
) -> FillOutcome:
    """Record a fill of an APPROVED or PARTIALLY_FILLED order and book it to the client's
    position, all in the caller's transaction. Sending the same fill again (same
    external_id, same details) answers the recorded one and changes nothing."""
    authorize(principal, Action.RECORD_EXECUTION)
    order = await lock_order(uow, repo.LOCK_ORDER, order_id)
    if order is None or not principal.can_see_desk(order.desk_id):
        raise OrderNotFound(f"No order {order_id}.")
    context = await uow.row(
        repo.FILL_CONTEXT,
        {"order_id": order_id, "venue": fill.venue, "external_id": fill.external_id},
    )
    assert context is not None  # one row whether or not the external id is known
    if context.id is not None:
        return _resent(order, fill, context)
    _check_fill(order, fill)
    parameters = _fill_parameters(uow, principal, order, fill, context.filled_notional)
    recorded = await uow.row(repo.RECORD_FILL, parameters)
    if recorded is None:  # taken meanwhile, or by a fill of a desk the caller does not see
        raise ExecutionConflict(
            f"external_id {fill.external_id} is already recorded for another fill.",
            external_id=fill.external_id,
        )
    execution = ExecutionOut.model_validate(recorded, from_attributes=True)
    await book_fill(uow, principal, _position_fill(order, fill, execution.id))
    order_now = _fill_state(
        order,
        status=recorded.order_status,
        filled_quantity=recorded.order_filled_quantity,
        avg_fill_price=recorded.order_avg_fill_price,
        version=recorded.order_version,
    )
    return FillOutcome(RecordedFill(execution=execution, order=order_now), created=True)


def _position_fill(order: FillOrder, fill: ExecutionIn, execution_id: int) -> PositionFill:
    """The fill as the client's position sees it: bought (+) or sold (-)."""
    return PositionFill(
        desk_id=order.desk_id,
        client_id=order.client_id,
        instrument_id=order.instrument_id,
        position_key=f"{order.client_external_id}:{order.symbol}",
        quantity=signed_quantity(order.side, fill.quantity),
        price=fill.price,
        execution_id=execution_id,
    )


def _fill_state(
    order: FillOrder,
    *,
    status: OrderStatus | None = None,
    filled_quantity: Decimal | None = None,
    avg_fill_price: Decimal | None = None,
    version: int | None = None,
) -> OrderFillState:
    """The order's fill state: as locked, or with what the fill changed."""
    filled = order.filled_quantity if filled_quantity is None else filled_quantity
    return OrderFillState(
        id=order.id,
        status=status or order.status,
        quantity=order.quantity,
        filled_quantity=filled,
        remaining_quantity=order.quantity - filled,
        avg_fill_price=avg_fill_price or order.avg_fill_price,
        version=version or order.version,
    )


def _check_fill(order: FillOrder, fill: ExecutionIn) -> None:
    if order.status not in FILLABLE:
        raise OrderNotFillable(
            f"Order {order.id} is {order.status}; only APPROVED or PARTIALLY_FILLED orders "
            "take fills.",
            current_status=order.status,
        )
    if fill.quantity % order.lot_size != 0:
        raise InvalidRequest(
            f"Quantity must be a multiple of the lot size {plain(order.lot_size)}.",
            field="quantity",
        )
    remaining = order.quantity - order.filled_quantity
    if fill.quantity > remaining:
        raise Overfill(
            f"Order {order.id} has {plain(remaining)} left to fill; a fill of "
            f"{plain(fill.quantity)} would overfill it.",
            field="quantity",
            remaining_quantity=plain(remaining),
        )
    _check_limit(order, fill)


def _check_limit(order: FillOrder, fill: ExecutionIn) -> None:
    """A limit order fills at its limit or better: a BUY never above it, a SELL never below."""
    limit = order.limit_price
    if limit is None:  # a MARKET order
        return
    through = fill.price > limit if order.side is Side.BUY else fill.price < limit
    if through:
        worse = "above" if order.side is Side.BUY else "below"
        raise FillOutsideLimit(
            f"A {order.side} limit order at {plain(limit)} cannot fill {worse} it.",
            field="price",
            limit_price=plain(limit),
        )


def _fill_parameters(
    uow: UnitOfWork,
    principal: Principal,
    order: FillOrder,
    fill: ExecutionIn,
    filled_notional: Decimal,
) -> dict[str, object]:
    with_fill = order.filled_quantity + fill.quantity
    with_fill_notional = EXACT.add(filled_notional, EXACT.multiply(fill.quantity, fill.price))
    status = OrderStatus.FILLED if with_fill == order.quantity else OrderStatus.PARTIALLY_FILLED
    payload = {
        "external_id": fill.external_id,
        "quantity": plain(fill.quantity),
        "price": plain(fill.price),
        "venue": fill.venue,
        "executed_at": fill.executed_at.isoformat(),
        "filled_quantity": plain(with_fill),
        "request_id": uow.request_id,
    }
    return {
        "id": order.id,
        "desk_id": order.desk_id,
        "quantity": fill.quantity,
        "price": fill.price,
        "venue": fill.venue,
        "executed_at": fill.executed_at,
        "external_id": fill.external_id,
        "recorded_by": principal.user_id,
        "recorded_by_key_id": principal.api_key_id,
        "avg_fill_price": divide_half_even(with_fill_notional, with_fill, AVG_FILL_PRICE_PLACES),
        "event_type": status,
        "version": order.version,
        "payload": orjson.dumps(payload).decode(),
        "action": f"order.{status.lower()}",
    }


def _resent(order: FillOrder, fill: ExecutionIn, known: FillContext) -> FillOutcome:
    """The external id is known: the same fill again is answered as recorded; anything else
    under that id is a conflict, never a second fill."""
    same = (known.order_id, known.quantity, known.price, known.venue, known.executed_at) == (
        order.id,
        fill.quantity,
        fill.price,
        fill.venue,
        fill.executed_at,
    )
    if not same:
        raise ExecutionConflict(
            f"external_id {fill.external_id} is execution {known.id} of order "
            f"{known.order_id}, with other details; a fill is recorded once.",
            external_id=fill.external_id,
            execution_id=known.id,
            order_id=known.order_id,
        )
    execution = ExecutionOut.model_validate(known, from_attributes=True)
    return FillOutcome(RecordedFill(execution=execution, order=_fill_state(order)), created=False)


async def list_executions(
    uow: UnitOfWork, principal: Principal, order_id: int
) -> list[ExecutionOut]:
    """The order's fills, in the order they were executed."""
    await get_order(uow, principal, order_id)  # authorizes reading orders; 404 across desks
    return await uow.rows(repo.EXECUTIONS_OF_ORDER, {"order_id": order_id})
