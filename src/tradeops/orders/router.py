from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from tradeops.db.http import TransactionalRoute
from tradeops.deps import API_PREFIX, CurrentPrincipal, UoW
from tradeops.errors import Forbidden, InvalidRequest
from tradeops.orders import service
from tradeops.orders.schemas import OrderCreate, OrderOut, OrderPage, OrderStatus
from tradeops.problems import problem_responses

router = APIRouter(prefix=f"{API_PREFIX}/orders", tags=["orders"], route_class=TransactionalRoute)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=OrderOut,
    responses=problem_responses(InvalidRequest, Forbidden, service.DuplicateClientOrderId),
)
async def submit_order(
    order: OrderCreate, request: Request, response: Response, principal: CurrentPrincipal, uow: UoW
) -> OrderOut:
    """Submit a trade order for a client. It is recorded as **PENDING** (risk status PENDING)
    and then waits for review and for a person with the approver role to approve it — no
    agent can approve.

    Quantities and prices are decimals: send them as strings (`"192.55"`) or JSON numbers.
    `order_type` defaults to LIMIT when `price` is given, MARKET otherwise. A repeated
    `client_order_id` answers 409 with the existing order's id (`existing_order_id`).
    """
    created = await service.submit_order(
        uow, principal, order, price_max_decimals=request.app.state.settings.price_max_decimals
    )
    response.headers["Location"] = f"{request.url.path}/{created.id}"
    response.headers["ETag"] = f'"{created.version}"'
    return created


@router.get(
    "/{order_id}", response_model=OrderOut, responses=problem_responses(service.OrderNotFound)
)
async def get_order(
    order_id: int, response: Response, principal: CurrentPrincipal, uow: UoW
) -> OrderOut:
    """One order, with its status, risk status, fills and `version` (also sent as the ETag)."""
    order = await service.get_order(uow, principal, order_id)
    response.headers["ETag"] = f'"{order.version}"'
    return order


@router.get("", response_model=OrderPage, responses=problem_responses(InvalidRequest))
async def list_orders(
    request: Request,
    principal: CurrentPrincipal,
    uow: UoW,
    status: OrderStatus | None = None,
    client_id: str | None = Query(default=None, description="Client external id, e.g. CUST-1001"),
    symbol: str | None = None,
    desk: str | None = Query(default=None, description="Desk code, e.g. EQ-US"),
    created_from: datetime | None = Query(default=None, description="Inclusive, ISO 8601"),
    created_to: datetime | None = Query(default=None, description="Exclusive, ISO 8601"),
    after: str | None = Query(default=None, description="next_cursor of the previous page"),
    limit: Annotated[int | None, Query(ge=1, le=500)] = None,
) -> OrderPage:
    """Orders of your desks, newest first, one page at a time (follow `next_cursor`)."""
    settings = request.app.state.settings
    return await service.list_orders(
        uow,
        principal,
        limit=limit or settings.page_size_default,
        after=after,
        status=status,
        client_id=client_id,
        symbol=symbol,
        desk=desk,
        created_from=created_from,
        created_to=created_to,
    )
