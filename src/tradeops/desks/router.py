from __future__ import annotations

from fastapi import APIRouter, status

from tradeops.db.http import TransactionalRoute
from tradeops.deps import API_PREFIX, CurrentPrincipal, UoW
from tradeops.desks import service
from tradeops.desks.service import DeskIn, DeskOut
from tradeops.errors import Forbidden, InvalidRequest
from tradeops.problems import problem_responses

router = APIRouter(prefix=f"{API_PREFIX}/desks", tags=["desks"], route_class=TransactionalRoute)


@router.get("", response_model=list[DeskOut])
async def list_desks(principal: CurrentPrincipal, uow: UoW) -> list[DeskOut]:
    """All desks, by code."""
    return await service.list_desks(uow, principal)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DeskOut,
    responses=problem_responses(InvalidRequest, Forbidden, service.DeskExists),
)
async def create_desk(data: DeskIn, principal: CurrentPrincipal, uow: UoW) -> DeskOut:
    """Create a desk (admin)."""
    return await service.create_desk(uow, principal, data)
