"""Recording fills: each is one transaction that records the execution, moves the order to
PARTIALLY_FILLED or FILLED, appends its history and audit events and books the position.

    lock the order ─▶ same external id already recorded? ─▶ answer that fill (a resend)
                   ─▶ fillable? lot size? within the limit? no overfill?
                   ─▶ execution + order + history + audit (one statement) ─▶ position

Every rule here is also in PostgreSQL: a trigger on executions (status, lot size, limit
price) and the orders CHECK filled_quantity <= quantity (overfill).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from tradeops.auth.authentication import principal_found
from tradeops.auth.key_usage import KeyUsage
from tradeops.auth.permissions import Action, authorize, who_may
from tradeops.auth.principal import Principal
from tradeops.db.uow import ConnectionSource, UnitOfWork, one_write
from tradeops.decimals import EXACT, divide_half_even, plain
from tradeops.errors import Conflict, InvalidRequest, NotFound
from tradeops.executions import repository as repo
from tradeops.executions.repository import FillContext, FillOrder
from tradeops.executions.schemas import (
    BustIn,
    ExecutionIn,
    ExecutionOut,
    OrderFillState,
    RecordedBust,
    RecordedFill,
)
from tradeops.orders.repository import lock_order
from tradeops.orders.service import OrderNotFound, get_order
from tradeops.orders.states import OrderStatus, Side
from tradeops.positions.accounting import signed_quantity
from tradeops.positions.service import (
    PositionFill,
    PositionKey,
    book_fill,
    lock_position,
    rebuild_position,
)

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


class ExecutionNotFound(NotFound):
    slug = "execution-not-found"
    title = "Execution not found"


class NotBustable(Conflict):
    slug = "not-bustable"
    title = "This execution cannot be busted"


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
    locked = await lock_position(uow, principal, _position_of(order))
    parameters = _fill_parameters(uow, principal, order, fill, context.filled_notional)
    recorded = await uow.row(repo.RECORD_FILL, parameters)
    if recorded is None:  # taken meanwhile, or by a fill of a desk the caller does not see
        raise ExecutionConflict(
            f"external_id {fill.external_id} is already recorded for another fill.",
            external_id=fill.external_id,
        )
    execution = ExecutionOut.model_validate(recorded, from_attributes=True)
    await book_fill(uow, principal, _position_fill(order, fill, execution.id), locked)
    order_now = _order_now(order.id, order.quantity, recorded)
    return FillOutcome(RecordedFill(execution=execution, order=order_now), created=True)


def _position_of(order: FillOrder) -> PositionKey:
    return PositionKey(
        desk_id=order.desk_id,
        client_id=order.client_id,
        instrument_id=order.instrument_id,
        position_key=f"{order.client_external_id}:{order.symbol}",
    )


def _position_fill(order: FillOrder, fill: ExecutionIn, execution_id: int) -> PositionFill:
    """The fill as the client's position sees it: bought (+) or sold (-)."""
    return PositionFill(
        position=_position_of(order),
        quantity=signed_quantity(order.side, fill.quantity),
        price=fill.price,
        execution_id=execution_id,
    )


def _fill_state(order: FillOrder) -> OrderFillState:
    """The order's fill state as locked (a fill sent again changes nothing)."""
    return OrderFillState(
        id=order.id,
        status=order.status,
        quantity=order.quantity,
        filled_quantity=order.filled_quantity,
        remaining_quantity=order.quantity - order.filled_quantity,
        avg_fill_price=order.avg_fill_price,
        version=order.version,
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
    payload = _fill_payload(fill, uow.request_id) | {"filled_quantity": plain(with_fill)}
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


def _fill_payload(fill: ExecutionIn, request_id: str | None) -> dict[str, str | None]:
    """The fill's order event's payload, but for the order's filled quantity after it."""
    return {
        "external_id": fill.external_id,
        "quantity": plain(fill.quantity),
        "price": plain(fill.price),
        "venue": fill.venue,
        "executed_at": fill.executed_at.isoformat(),
        "request_id": request_id,
    }


async def record_in_one_statement(
    source: ConnectionSource,
    credential: Mapping[str, Any],
    order_id: int,
    fill: ExecutionIn,
    key_usage: KeyUsage,
) -> tuple[Principal, RecordedFill | None]:
    """A fill in one round trip (repo.RECORD_FILL_IN_ONE_STATEMENT): the caller the
    credential names, 401 if none, and the fill with its order's new fill state; None when
    nothing was written (a caller who may not, an order not found or a rule refuses, an
    external id already known), which record_execution, in a transaction, explains."""
    params = {
        **credential,
        **who_may(Action.RECORD_EXECUTION),
        "order_id": order_id,
        "quantity": fill.quantity,
        "price": fill.price,
        "venue": fill.venue,
        "executed_at": fill.executed_at,
        "external_id": fill.external_id,
        "payload": orjson.dumps(_fill_payload(fill, credential["request_id"] or None)).decode(),
    }
    read = await one_write(source, repo.RECORD_FILL_IN_ONE_STATEMENT, params)
    principal = principal_found(None if read is None else read.caller, key_usage)
    recorded = None if read is None else read.recorded
    return principal, None if recorded is None else _recorded_alone(recorded)


def _recorded_alone(row: repo.FillRecorded) -> RecordedFill:
    return RecordedFill(
        execution=ExecutionOut.model_validate(row, from_attributes=True),
        order=_order_now(row.order_id, row.order_quantity, row),
    )


def _order_now(
    order_id: int, quantity: Decimal, recorded: repo.RecordedExecution | repo.RecordedBust
) -> OrderFillState:
    """The order's fill state as the statement that recorded an execution answered it."""
    return OrderFillState(
        id=order_id,
        status=recorded.order_status,
        quantity=quantity,
        filled_quantity=recorded.order_filled_quantity,
        remaining_quantity=quantity - recorded.order_filled_quantity,
        avg_fill_price=recorded.order_avg_fill_price,
        version=recorded.order_version,
    )


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


async def bust_execution(
    uow: UnitOfWork, principal: Principal, order_id: int, execution_id: int, bust: BustIn
) -> RecordedBust:
    """Take a fill back: record a reversing execution (BUST) linked to it, never changing
    or deleting it; the order's filled quantity, average price and status become what its
    other fills make them (FILLED or PARTIALLY_FILLED back to PARTIALLY_FILLED or APPROVED;
    an EXPIRED order stays EXPIRED, with less filled), and the client's position is rebuilt
    from the fills that stand. A correction is a bust and then the corrected fill."""
    authorize(principal, Action.RECORD_EXECUTION)
    order = await lock_order(uow, repo.LOCK_ORDER, order_id)
    if order is None or not principal.can_see_desk(order.desk_id):
        raise OrderNotFound(f"No order {order_id}.")
    target = await uow.row(repo.BUST_TARGET, {"execution_id": execution_id, "order_id": order_id})
    if target is None:
        raise ExecutionNotFound(f"Order {order_id} has no execution {execution_id}.")
    _check_bustable(target)
    key = _position_of(order)
    locked = await lock_position(uow, principal, key)
    recorded = await uow.row(
        repo.RECORD_BUST, _bust_parameters(uow, principal, order, target, bust)
    )
    if recorded is None:  # pragma: no cover - the order is locked; kept as a guard
        raise NotBustable(f"Order {order_id} changed while execution {execution_id} was busted.")
    await rebuild_position(uow, principal, key, locked, recorded.id)
    execution = ExecutionOut.model_validate(recorded, from_attributes=True)
    return RecordedBust(execution=execution, order=_order_now(order.id, order.quantity, recorded))


def _check_bustable(target: repo.BustTarget) -> None:
    if target.kind != "FILL":
        raise NotBustable(
            f"Execution {target.id} is a bust; a bust is not busted. Record the fill again.",
            execution_id=target.id,
        )
    if target.busted_by is not None:
        raise NotBustable(
            f"Execution {target.id} was already busted by execution {target.busted_by}.",
            execution_id=target.id,
            busted_by=target.busted_by,
        )


def _status_after_bust(order: FillOrder, remaining: Decimal) -> OrderStatus:
    if order.status not in (OrderStatus.FILLED, OrderStatus.PARTIALLY_FILLED):
        return order.status  # EXPIRED keeps its status; its fills shrink
    return OrderStatus.PARTIALLY_FILLED if remaining > 0 else OrderStatus.APPROVED


def _bust_parameters(
    uow: UnitOfWork,
    principal: Principal,
    order: FillOrder,
    target: repo.BustTarget,
    bust: BustIn,
) -> dict[str, object]:
    remaining = target.remaining_quantity
    average = (
        divide_half_even(target.remaining_notional, remaining, AVG_FILL_PRICE_PLACES)
        if remaining > 0
        else None
    )
    payload = {
        "execution_id": target.id,
        "quantity": plain(target.quantity),
        "price": plain(target.price),
        "reason": bust.reason,
        "filled_quantity": plain(remaining),
        "request_id": uow.request_id,
    }
    return {
        "id": order.id,
        "desk_id": order.desk_id,
        "quantity": target.quantity,
        "price": target.price,
        "venue": target.venue,
        "executed_at": target.executed_at,
        "external_id": f"bust:{target.id}",
        "recorded_by": principal.user_id,
        "recorded_by_key_id": principal.api_key_id,
        "reverses_execution_id": target.id,
        "reason": bust.reason,
        "filled_quantity": remaining,
        "avg_fill_price": average,
        "status": _status_after_bust(order, remaining),
        "version": order.version,
        "event_type": "FILL_BUSTED",
        "payload": orjson.dumps(payload).decode(),
        "action": "order.fill_busted",
    }
