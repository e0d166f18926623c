"""Desks: list them, create them, and resolve a desk code to its id."""

from __future__ import annotations

from datetime import time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    time_zone: str = Field(
        default="UTC",
        pattern=r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$",
        max_length=64,
        description="IANA time zone of the desk's end of day",
        examples=["America/New_York"],
    )
    day_cutoff: time = Field(
        default=time(23, 59),
        description="Local end of day: DAY orders still open then expire",
        examples=["16:00"],
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value}") from None
        return value


class DeskOut(BaseModel):
    code: str
    name: str
    time_zone: str
    day_cutoff: time


class DeskExists(Conflict):
    slug = "desk-exists"
    title = "Desk already exists"


async def list_desks(uow: UnitOfWork, principal: Principal) -> list[DeskOut]:
    authorize(principal, Action.READ_REFERENCE_DATA)
    rows = await uow.rows_of(repo.all_desks(), repo.DeskRow)
    return [DeskOut.model_validate(r, from_attributes=True) for r in rows]


async def create_desk(uow: UnitOfWork, principal: Principal, data: DeskIn) -> DeskOut:
    authorize(principal, Action.MANAGE_DESKS)
    row = await uow.row_of(
        repo.insert_desk(data.code, data.name, data.time_zone, data.day_cutoff), repo.DeskRow
    )
    if row is None:
        raise DeskExists(f"Desk {data.code} already exists.")
    created = DeskOut.model_validate(row, from_attributes=True)
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
