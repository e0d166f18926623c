from __future__ import annotations

from fastapi import APIRouter, status

from tradeops.clients import service
from tradeops.clients.schemas import ClientCreate, ClientList, ClientOut, ClientUpdate
from tradeops.db.http import TransactionalRoute
from tradeops.deps import API_PREFIX, CurrentPrincipal, UoW
from tradeops.errors import Forbidden, InvalidRequest
from tradeops.problems import problem_responses

router = APIRouter(prefix=f"{API_PREFIX}/clients", tags=["clients"], route_class=TransactionalRoute)


@router.get("", response_model=ClientList)
async def list_clients(
    principal: CurrentPrincipal, uow: UoW, desk: str | None = None
) -> ClientList:
    """Clients of your desks (every desk for risk and admin), by client id."""
    return ClientList(items=await service.list_clients(uow, principal, desk=desk))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ClientOut,
    responses=problem_responses(InvalidRequest, Forbidden, service.ClientExists),
)
async def create_client(data: ClientCreate, principal: CurrentPrincipal, uow: UoW) -> ClientOut:
    """Onboard a client on a desk (admin)."""
    return await service.create_client(uow, principal, data)


@router.get(
    "/{client_id}", response_model=ClientOut, responses=problem_responses(service.ClientNotFound)
)
async def get_client(client_id: str, principal: CurrentPrincipal, uow: UoW) -> ClientOut:
    """One client by external id (e.g. CUST-1001); clients of other desks are not found."""
    return await service.get_client(uow, principal, client_id)


@router.patch(
    "/{client_id}",
    response_model=ClientOut,
    responses=problem_responses(InvalidRequest, Forbidden, service.ClientNotFound),
)
async def update_client(
    client_id: str, changes: ClientUpdate, principal: CurrentPrincipal, uow: UoW
) -> ClientOut:
    """Rename a client or set it ACTIVE/INACTIVE (admin). Inactive clients take no new orders."""
    return await service.update_client(uow, principal, client_id, changes)
