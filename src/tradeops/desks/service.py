"""Desks: list them, create them, and resolve a desk code to its id."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tradeops.audit import service as audit
from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.db.uow import UnitOfWork
from tradeops.desks import repository as repo
from tradeops.errors import Conflict, InvalidRequest


class DeskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(pattern=r"^[A-Z0-9][A-Z0-9-]{1,31}$", examples=["EQ-US"])
    name: str = Field(min_length=1, max_length=200, examples=["US Equities"])


class DeskOut(BaseModel):
    code: str
    name: str


class DeskExists(Conflict):
    slug = "desk-exists"
    title = "Desk already exists"


async def list_desks(uow: UnitOfWork, principal: Principal) -> list[DeskOut]:
    authorize(principal, Action.READ_REFERENCE_DATA)
    rows = await uow.rows_of(repo.all_desks(), repo.DeskRow)
    return [DeskOut(code=r.code, name=r.name) for r in rows]


async def create_desk(uow: UnitOfWork, principal: Principal, data: DeskIn) -> DeskOut:
    authorize(principal, Action.MANAGE_DESKS)
    row = await uow.row_of(repo.insert_desk(data.code, data.name), repo.DeskRow)
    if row is None:
        raise DeskExists(f"Desk {data.code} already exists.")
    created = DeskOut(code=row.code, name=row.name)
    await audit.record(uow, principal, "desk.created", "desk", data.code, after=created)
    return created


async def desk_ids_by_code(uow: UnitOfWork, codes: list[str]) -> dict[str, int]:
    """Resolve desk codes; an unknown code is a field error on `field`."""
    rows = await uow.rows_of(repo.desks_by_code(codes), repo.DeskKey)
    found: dict[str, int] = {row.code: row.id for row in rows}
    missing = sorted(set(codes) - found.keys())
    if missing:
        raise InvalidRequest(f"Unknown desk: {', '.join(missing)}.", field="desk")
    return found
