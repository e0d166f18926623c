from __future__ import annotations

from fastapi import APIRouter, status

from tradeops.db.http import TransactionalRoute
from tradeops.deps import API_PREFIX, CurrentPrincipal, UoW
from tradeops.errors import Forbidden, InvalidRequest
from tradeops.instruments import service
from tradeops.instruments.schemas import (
    InstrumentCreate,
    InstrumentList,
    InstrumentOut,
    InstrumentUpdate,
)
from tradeops.problems import problem_responses

router = APIRouter(
    prefix=f"{API_PREFIX}/instruments", tags=["instruments"], route_class=TransactionalRoute
)


@router.get("", response_model=InstrumentList)
async def list_instruments(
    principal: CurrentPrincipal, uow: UoW, active: bool | None = None
) -> InstrumentList:
    """Tradable instruments with their currency, lot size and tick size, by symbol."""
    return InstrumentList(items=await service.list_instruments(uow, principal, active=active))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=InstrumentOut,
    responses=problem_responses(InvalidRequest, Forbidden, service.InstrumentExists),
)
async def create_instrument(
    data: InstrumentCreate, principal: CurrentPrincipal, uow: UoW
) -> InstrumentOut:
    """Add an instrument (admin; creating it restricted also needs risk or admin)."""
    return await service.create_instrument(uow, principal, data)


@router.get(
    "/{symbol}",
    response_model=InstrumentOut,
    responses=problem_responses(service.InstrumentNotFound),
)
async def get_instrument(symbol: str, principal: CurrentPrincipal, uow: UoW) -> InstrumentOut:
    """One instrument by symbol (any case)."""
    return await service.get_instrument(uow, principal, symbol)


@router.patch(
    "/{symbol}",
    response_model=InstrumentOut,
    responses=problem_responses(InvalidRequest, Forbidden, service.InstrumentNotFound),
)
async def update_instrument(
    symbol: str, changes: InstrumentUpdate, principal: CurrentPrincipal, uow: UoW
) -> InstrumentOut:
    """Change an instrument. `restricted` (the restricted list) is for risk or admin; the
    other fields for admin. New lot or tick sizes apply to orders submitted afterwards."""
    return await service.update_instrument(uow, principal, symbol, changes)
