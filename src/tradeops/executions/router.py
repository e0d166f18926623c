from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from tradeops.db.http import TransactionalRoute, answered_in_one_statement
from tradeops.db.uow import ConnectionSource
from tradeops.deps import (
    API_PREFIX,
    CurrentPrincipal,
    RowId,
    UoW,
    answered_in_one_round_trip,
    body_as,
    row_id,
)
from tradeops.errors import Forbidden, InvalidRequest
from tradeops.executions import service
from tradeops.executions.schemas import (
    BustIn,
    ExecutionIn,
    ExecutionOut,
    RecordedBust,
    RecordedFill,
)
from tradeops.orders.service import OrderNotFound
from tradeops.problems import problem_responses

router = APIRouter(
    prefix=f"{API_PREFIX}/orders", tags=["executions"], route_class=TransactionalRoute
)


def _fill_response(order_id: int, outcome: service.FillOutcome) -> Response:
    """201 for a new fill, 200 (replayed) for the same fill sent again."""
    headers = {"Location": f"{API_PREFIX}/orders/{order_id}/executions"}
    if not outcome.created:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        outcome.fill.model_dump_json(),
        status_code=status.HTTP_201_CREATED if outcome.created else status.HTTP_200_OK,
        media_type="application/json",
        headers=headers,
    )


async def _filled_in_one_statement(db: ConnectionSource, request: Request) -> Response | None:
    """A fill in one round trip (issue 15): authentication, the context, the order's lock,
    the execution, the order's fill state and the position in one statement. None (the
    endpoint answers, in a transaction, as documented) for an id or a body it does not
    take, no credentials, or a fill not recorded (a caller who may not, an order not found
    or a rule refuses, a resent fill or a conflict): nothing was written then."""
    order_id = row_id(request.path_params["order_id"])
    fill = await body_as(request, ExecutionIn)
    if order_id is None or fill is None:
        return None
    return await answered_in_one_round_trip(
        request,
        lambda credential, key_usage: service.record_in_one_statement(
            db, credential, order_id, fill, key_usage
        ),
        lambda _, recorded: (
            None
            if recorded is None
            else _fill_response(order_id, service.FillOutcome(recorded, created=True))
        ),
    )


@router.post(
    "/{order_id}/executions",
    status_code=status.HTTP_201_CREATED,
    response_model=RecordedFill,
    responses={
        200: {"model": RecordedFill, "description": "The same fill was sent again: as recorded"},
        **problem_responses(
            InvalidRequest,
            service.Overfill,
            service.FillOutsideLimit,
            Forbidden,
            OrderNotFound,
            service.OrderNotFillable,
            service.ExecutionConflict,
        ),
    },
)
@answered_in_one_statement(_filled_in_one_statement)
async def record_execution(
    order_id: RowId, fill: ExecutionIn, principal: CurrentPrincipal, uow: UoW
) -> Response:
    """Record a fill of an APPROVED or PARTIALLY_FILLED order, as a venue or the OMS reports
    it: the order's `filled_quantity` and `avg_fill_price` are updated and its status becomes
    PARTIALLY_FILLED, or FILLED when nothing is left; the client's position (quantity, cost,
    realized P&L) changes in the same transaction.

    `quantity` (a multiple of the lot size, at most what is left: more is an `overfill`, 422)
    and `price` (not through a LIMIT order's limit, 422) are decimal strings. `external_id`
    is the venue's id of the fill and makes retries safe: the same fill sent again answers
    **200** with the fill as recorded (and `Idempotent-Replayed: true`), never a second fill;
    the same `external_id` with other details is **409** `execution-conflict`. A first fill
    answers **201**. Orders in other statuses: **409** `order-not-fillable`. For admins and
    an admin's connector key with the scope `executions:write`.
    """
    outcome = await service.record_execution(uow, principal, order_id, fill)
    return _fill_response(order_id, outcome)


@router.get(
    "/{order_id}/executions",
    response_model=list[ExecutionOut],
    responses=problem_responses(OrderNotFound),
)
async def list_executions(
    order_id: RowId, principal: CurrentPrincipal, uow: UoW
) -> list[ExecutionOut]:
    """The order's fills, oldest execution first: quantity, price, venue, when, the venue's
    `external_id` and who recorded it. Whoever may read the order may read its fills."""
    return await service.list_executions(uow, principal, order_id)


@router.post(
    "/{order_id}/executions/{execution_id}/bust",
    status_code=status.HTTP_201_CREATED,
    response_model=RecordedBust,
    responses=problem_responses(
        InvalidRequest, Forbidden, OrderNotFound, service.ExecutionNotFound, service.NotBustable
    ),
)
async def bust_execution(
    order_id: RowId, execution_id: RowId, bust: BustIn, principal: CurrentPrincipal, uow: UoW
) -> RecordedBust:
    """Take a fill back (a venue busted the trade, or it was booked wrong), with a `reason`:
    a reversing execution (`kind` BUST, `reverses_execution_id` the fill, same quantity,
    price and trade time `executed_at`, its own booking time `recorded_at`) is recorded; the
    fill itself is never changed or deleted, and lists as `busted_by` the bust. The order's
    `filled_quantity`, `avg_fill_price` and status become what its other fills make them
    (FILLED or PARTIALLY_FILLED back to PARTIALLY_FILLED or APPROVED; EXPIRED stays EXPIRED),
    and the client's position and realized P&L are rebuilt exactly as if the fill had never
    been booked. To correct a fill: bust it, then record the corrected fill.

    A fill is busted once: again, or busting a bust, is **409** `not-bustable`; an execution
    of another order is **404**. For admins and an admin's key with `executions:write`.
    """
    return await service.bust_execution(uow, principal, order_id, execution_id, bust)
