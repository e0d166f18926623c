from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import AwareDatetime

from tradeops.clients.service import ClientNotFound
from tradeops.db.http import TransactionalRoute, answered_in_one_statement
from tradeops.db.uow import ConnectionSource
from tradeops.deps import (
    API_PREFIX,
    CurrentPrincipal,
    DeclaredQueryOnly,
    UoW,
    answered_in_one_round_trip,
)
from tradeops.errors import Forbidden, InvalidRequest
from tradeops.positions import service
from tradeops.positions.schemas import Portfolio, PositionPage
from tradeops.problems import problem_responses

router = APIRouter(prefix=API_PREFIX, tags=["positions"], route_class=TransactionalRoute)


@router.get(
    "/positions",
    response_model=PositionPage,
    responses=problem_responses(InvalidRequest, Forbidden),
    dependencies=[DeclaredQueryOnly],
)
async def list_positions(
    request: Request,
    principal: CurrentPrincipal,
    uow: UoW,
    client_id: str | None = Query(default=None, description="Client external id, e.g. CUST-1001"),
    symbol: str | None = None,
    desk: str | None = Query(default=None, description="Desk code, e.g. EQ-US"),
    open_only: bool = Query(default=False, description="Leave out flat (closed) positions"),
    after: str | None = Query(default=None, description="next_cursor of the previous page"),
    limit: Annotated[int | None, Query(ge=1, le=500)] = None,
    as_of: AwareDatetime | None = Query(
        default=None,
        description="Positions as booked at this time (ISO 8601 with a time zone): rebuilt "
        "from the fills recorded by then, less the busts recorded by then; one page, slower",
    ),
) -> PositionPage:
    """Positions of your desks (every desk for risk and admin), by client and instrument,
    one page at a time (follow `next_cursor`).

    Each fill changes its client's position in the fill's own transaction. `quantity` is
    signed (negative: short); `cost_basis` is what the open quantity cost and `avg_cost` that
    per unit (average-cost method); `realized_pnl` is what reducing trades realized. Decimal
    strings in the instrument's `currency`. For market values and unrealized P&L, see
    `GET /clients/{client_id}/portfolio`. API keys need the scope `positions:read`.

    With `as_of`, positions as they stood at that booking time (executions' `recorded_at`,
    not their trade time `executed_at`): replayed from the fills booked by then that no bust
    booked by then took back. Every matching position in one page (`after` and `limit` do
    not apply); `version` is then the number of fills replayed, `updated_at` the last one's
    booking time.
    """
    if as_of is not None:
        return await service.positions_as_of(
            uow,
            principal,
            as_of,
            client_id=client_id,
            symbol=symbol,
            desk=desk,
            open_only=open_only,
        )
    settings = request.app.state.settings
    return await service.list_positions(
        uow,
        principal,
        limit=limit or settings.page_size_default,
        after=after,
        client_id=client_id,
        symbol=symbol,
        desk=desk,
        open_only=open_only,
    )


async def _portfolio_in_one_statement(db: ConnectionSource, request: Request) -> Response | None:
    """GET /clients/{id}/portfolio in one round trip (issue 15); None without credentials,
    for the endpoint below to answer its documented 401."""
    client_id = request.path_params["client_id"]
    return await answered_in_one_round_trip(
        request,
        lambda credential, key_usage: service.read_portfolio(db, credential, client_id, key_usage),
        lambda principal, document: _portfolio_document(
            service.shown_portfolio(principal, document, client_id)
        ),
    )


def _portfolio_document(document: str) -> Response:
    return Response(document, media_type="application/json")


@router.get(
    "/clients/{client_id}/portfolio",
    response_model=Portfolio,
    responses=problem_responses(ClientNotFound, Forbidden),
)
@answered_in_one_statement(_portfolio_in_one_statement)
async def client_portfolio(client_id: str, principal: CurrentPrincipal, uow: UoW) -> Response:
    """A client's portfolio valued now: every position (flat ones too, for their realized
    P&L) with quantity, average cost, cost basis, the instrument's latest market price,
    market value (quantity * last price), unrealized P&L (market value - cost basis) and
    realized P&L, and totals per currency.

    All amounts are exact decimal strings in the position's currency. A position whose
    instrument has no price yet says `priced: false`, with null last price, market value and
    unrealized P&L; its currency's total market value and unrealized P&L are then null too
    (never a partial sum) and `unpriced_positions` counts it. Clients of desks you do not
    cover are not found (404). API keys need the scope `positions:read`.
    """
    return _portfolio_document(await service.portfolio_json(uow, principal, client_id))
