"""The clients table's statements: reads through `readable`, and its one writer's changes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Insert, Select, Update, func, select, update
from sqlalchemy.dialects.postgresql import insert

from tradeops.auth.principal import Principal
from tradeops.clients.models import Client
from tradeops.clients.schemas import ClientCreate
from tradeops.db.base import table_of
from tradeops.desks.models import Desk

clients = table_of(Client)
desks = table_of(Desk)


def readable(principal: Principal) -> Select[Any]:
    """Clients as the principal may see them (row-level security enforces the same), with
    ClientOut's columns."""
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


def client_by_id(principal: Principal, client_id: str) -> Select[Any]:
    return readable(principal).where(clients.c.external_id == client_id)


def clients_of(principal: Principal, desk: str | None) -> Select[Any]:
    statement = readable(principal).order_by(clients.c.external_id)
    return statement if desk is None else statement.where(desks.c.code == desk)


def insert_client(data: ClientCreate, desk_id: int) -> Insert:
    """A new client, or nothing when its id is taken; returns its key as `id`."""
    return (
        insert(clients)
        .values(external_id=data.client_id, name=data.name, desk_id=desk_id, status=data.status)
        .on_conflict_do_nothing(index_elements=["external_id"])
        .returning(clients.c.id)
    )


def update_client(client_id: str, values: dict[str, Any]) -> Update:
    return (
        update(clients)
        .where(clients.c.external_id == client_id)
        .values(**values, updated_at=func.now())
        .returning(clients.c.id)
    )
