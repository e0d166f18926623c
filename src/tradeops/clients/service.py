"""Clients: the bank's customers, each covered by one desk."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.dialects.postgresql import insert

from tradeops.audit import service as audit
from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.clients.models import Client
from tradeops.clients.schemas import ClientCreate, ClientOut, ClientUpdate
from tradeops.db.base import table_of
from tradeops.db.uow import UnitOfWork
from tradeops.desks.models import Desk
from tradeops.desks.service import desk_ids_by_code
from tradeops.errors import Conflict, NotFound

clients = table_of(Client)
desks = table_of(Desk)


class ClientNotFound(NotFound):
    slug = "client-not-found"
    title = "Client not found"


class ClientExists(Conflict):
    slug = "client-exists"
    title = "Client already exists"


def _readable(principal: Principal) -> Select[Any]:
    """Clients as the principal may see them (row-level security enforces the same)."""
    statement = select(
        clients.c.external_id.label("client_id"),
        clients.c.name,
        desks.c.code.label("desk"),
        clients.c.status,
        clients.c.created_at,
        clients.c.updated_at,
    ).join(desks, desks.c.id == clients.c.desk_id)
    if not principal.all_desks:
        statement = statement.where(clients.c.desk_id.in_(principal.desk_ids))
    return statement


async def get_client(uow: UnitOfWork, principal: Principal, client_id: str) -> ClientOut:
    authorize(principal, Action.READ_CLIENTS)
    row = await uow.one_or_none(_readable(principal).where(clients.c.external_id == client_id))
    if row is None:
        raise ClientNotFound(f"No client {client_id}.")
    return ClientOut.model_validate(row._mapping)


async def list_clients(
    uow: UnitOfWork, principal: Principal, *, desk: str | None = None
) -> list[ClientOut]:
    authorize(principal, Action.READ_CLIENTS)
    statement = _readable(principal).order_by(clients.c.external_id)
    if desk is not None:
        statement = statement.where(desks.c.code == desk)
    return [ClientOut.model_validate(r._mapping) for r in await uow.execute(statement)]


async def create_client(uow: UnitOfWork, principal: Principal, data: ClientCreate) -> ClientOut:
    authorize(principal, Action.MANAGE_CLIENTS)
    desk_id = (await desk_ids_by_code(uow, [data.desk]))[data.desk]
    created = await uow.scalar(
        insert(clients)
        .values(external_id=data.client_id, name=data.name, desk_id=desk_id, status=data.status)
        .on_conflict_do_nothing(index_elements=["external_id"])
        .returning(clients.c.id)
    )
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
        updated = await uow.scalar(
            update(clients)
            .where(clients.c.external_id == client_id)
            .values(**values, updated_at=func.now())
            .returning(clients.c.id)
        )
        if updated is None:
            raise ClientNotFound(f"No client {client_id}.")
        after = await get_client(uow, principal, client_id)
        await audit.record(
            uow, principal, "client.updated", "client", client_id, before=before, after=after
        )
        return after
    return before
