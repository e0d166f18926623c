"""Typed dependencies so route signatures read as prose: `principal: CurrentPrincipal`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tradeops.auth.principal import SYSTEM, Principal
from tradeops.db.uow import UnitOfWork

API_PREFIX = "/api/v1"


async def current_principal(request: Request) -> Principal:
    return SYSTEM


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


async def unit_of_work(request: Request, principal: CurrentPrincipal) -> UnitOfWork:
    """The request's transaction, with the principal's context set as its first statement."""
    connection = request.state.connection
    if connection is None:  # pragma: no cover - a router without TransactionalRoute
        raise RuntimeError("unit_of_work needs a TransactionalRoute")
    uow = UnitOfWork(connection)
    await uow.set_context(principal, request.state.request_id)
    return uow


UoW = Annotated[UnitOfWork, Depends(unit_of_work)]
