"""Clients: the bank's customers, each covered by one desk."""

from __future__ import annotations

from tradeops.audit import recording as audit
from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.clients import repository as repo
from tradeops.clients.schemas import ClientCreate, ClientOut, ClientUpdate
from tradeops.db.prepared import Id
from tradeops.db.uow import UnitOfWork
from tradeops.desks.service import desk_ids_by_code
from tradeops.errors import Conflict, NotFound


class ClientNotFound(NotFound):
    slug = "client-not-found"
    title = "Client not found"


class ClientExists(Conflict):
    slug = "client-exists"
    title = "Client already exists"


async def get_client(uow: UnitOfWork, principal: Principal, client_id: str) -> ClientOut:
    authorize(principal, Action.READ_CLIENTS)
    client = await uow.row_of(repo.client_by_id(principal, client_id), ClientOut)
    if client is None:
        raise ClientNotFound(f"No client {client_id}.")
    return client


async def list_clients(
    uow: UnitOfWork, principal: Principal, *, desk: str | None = None
) -> list[ClientOut]:
    authorize(principal, Action.READ_CLIENTS)
    return await uow.rows_of(repo.clients_of(principal, desk), ClientOut)


async def create_client(uow: UnitOfWork, principal: Principal, data: ClientCreate) -> ClientOut:
    authorize(principal, Action.MANAGE_CLIENTS)
    desk_id = (await desk_ids_by_code(uow, [data.desk]))[data.desk]
    created = await uow.row_of(repo.insert_client(data, desk_id), Id)
    if created is None:
        raise ClientExists(f"Client {data.client_id} already exists.")
    client = await get_client(uow, principal, data.client_id)
    await audit.record(uow, principal, "client.created", "client", data.client_id, after=client)
    return client


async def update_client(
    uow: UnitOfWork, principal: Principal, client_id: str, changes: ClientUpdate
) -> ClientOut:
    authorize(principal, Action.MANAGE_CLIENTS)
    values = changes.model_dump(exclude_unset=True, exclude_none=True)
    before = await get_client(uow, principal, client_id)
    if values:
        updated = await uow.row_of(repo.update_client(client_id, values), Id)
        if updated is None:
            raise ClientNotFound(f"No client {client_id}.")
        after = await get_client(uow, principal, client_id)
        await audit.record(
            uow, principal, "client.updated", "client", client_id, before=before, after=after
        )
        return after
    return before
