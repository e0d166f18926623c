"""Desks: list them, create them, and resolve a desk code to its id."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from tradeops.audit import service as audit
from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.db.base import table_of
from tradeops.db.uow import UnitOfWork
from tradeops.desks.models import Desk
from tradeops.errors import Conflict, InvalidRequest

desks = table_of(Desk)


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
    rows = await uow.execute(select(desks.c.code, desks.c.name).order_by(desks.c.code))
    return [DeskOut.model_validate(r._mapping) for r in rows]


async def create_desk(uow: UnitOfWork, principal: Principal, data: DeskIn) -> DeskOut:
    authorize(principal, Action.MANAGE_DESKS)
    row = await uow.one_or_none(
        insert(desks)
        .values(code=data.code, name=data.name)
        .on_conflict_do_nothing(index_elements=["code"])
        .returning(desks.c.code, desks.c.name)
    )
    if row is None:
        raise DeskExists(f"Desk {data.code} already exists.")
    created = DeskOut.model_validate(row._mapping)
    await audit.record(uow, principal, "desk.created", "desk", data.code, after=created)
    return created


async def desk_ids_by_code(uow: UnitOfWork, codes: list[str]) -> dict[str, int]:
    """Resolve desk codes; an unknown code is a field error on `field`."""
    rows = await uow.execute(select(desks.c.code, desks.c.id).where(desks.c.code.in_(codes)))
    found: dict[str, int] = {row.code: row.id for row in rows}
    missing = sorted(set(codes) - found.keys())
    if missing:
        raise InvalidRequest(f"Unknown desk: {', '.join(missing)}.", field="desk")
    return found
