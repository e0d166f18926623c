"""Desks: list them, create them, and resolve a desk code to its id."""

from __future__ import annotations

from datetime import datetime, time
from decimal import Decimal
from itertools import pairwise
from typing import Annotated, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tradeops.audit import recording as audit
from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.db.uow import UnitOfWork
from tradeops.decimals import DecimalOut
from tradeops.desks import repository as repo
from tradeops.errors import Conflict, InvalidRequest, NotFound


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


class DeskNotFound(NotFound):
    slug = "desk-not-found"
    title = "Desk not found"


MinNotional = Annotated[Decimal, Field(ge=0, max_digits=20, decimal_places=6, allow_inf_nan=False)]


class ApprovalBand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_notional: MinNotional = Field(
        examples=["1000000"], description="Orders of at least this notional (up to the next band)"
    )
    approvals: int = Field(ge=1, le=5, description="Approvals from distinct people they need")


class ApprovalBandOut(BaseModel):
    min_notional: DecimalOut
    approvals: int


DEFAULT_CURRENCY = "USD"


class ApprovalPolicyIn(BaseModel):
    """A desk's approval policy, replaced as a whole. Bands by order notional (quantity x
    price; a MARKET order: x the latest market price), lowest first, the first at 0."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "currency": "USD",
                    "bands": [
                        {"min_notional": "0", "approvals": 1},
                        {"min_notional": "1000000", "approvals": 2},
                    ],
                }
            ]
        },
    )

    currency: str | None = Field(
        default=None,
        pattern=r"^[A-Z]{3}$",
        description="The currency of the bands' notionals (default: the policy's current one, "
        "else USD). An order in another currency needs its strictest band (there are no FX "
        "rates).",
    )
    bands: list[ApprovalBand] = Field(min_length=1, max_length=10)

    @model_validator(mode="after")
    def _bands_from_zero_upwards(self) -> Self:
        if self.bands[0].min_notional != 0:
            raise ValueError("the first band starts at min_notional 0")
        lows = [band.min_notional for band in self.bands]
        if any(a >= b for a, b in pairwise(lows)):
            raise ValueError("bands are listed by min_notional, each above the one before")
        return self


class ApprovalPolicyOut(BaseModel):
    desk: str
    currency: str = Field(description="The currency of the bands' notionals")
    bands: list[ApprovalBandOut]
    updated_by: str | None = Field(description="null: the desk has no policy of its own yet")
    updated_at: datetime | None


def _policy_out(desk: str, row: repo.PolicyRow) -> ApprovalPolicyOut:
    """The stored policy; a desk without one: the default, one approval for every order."""
    bands = row.bands or [{"min_notional": "0", "approvals": 1}]
    return ApprovalPolicyOut(
        desk=desk,
        currency=row.currency or DEFAULT_CURRENCY,
        bands=[ApprovalBandOut.model_validate(b) for b in bands],
        updated_by=row.updated_by,
        updated_at=row.updated_at,
    )


async def _policy_row(uow: UnitOfWork, code: str) -> repo.PolicyRow:
    row = await uow.row(repo.APPROVAL_POLICY, {"code": code})
    if row is None:
        raise DeskNotFound(f"No desk {code}.")
    return row


async def get_approval_policy(
    uow: UnitOfWork, principal: Principal, code: str
) -> ApprovalPolicyOut:
    authorize(principal, Action.READ_APPROVAL_POLICIES)
    return _policy_out(code, await _policy_row(uow, code))


async def set_approval_policy(
    uow: UnitOfWork, principal: Principal, code: str, policy: ApprovalPolicyIn
) -> ApprovalPolicyOut:
    """Replace the desk's policy; orders submitted from now on follow it (an order keeps the
    approvals it was submitted with). Audited with the policy before and after."""
    authorize(principal, Action.MANAGE_APPROVAL_POLICIES)
    before = await _policy_row(uow, code)
    currency = policy.currency or before.currency or DEFAULT_CURRENCY
    await uow.row(
        repo.REPLACE_POLICY,
        {"desk_id": before.desk_id, "currency": currency, "updated_by": principal.user_id},
    )
    await uow.rows(
        repo.ADD_BANDS,
        {
            "desk_id": before.desk_id,
            "min_notionals": [band.min_notional for band in policy.bands],
            "approvals": [band.approvals for band in policy.bands],
        },
    )
    after = _policy_out(code, await _policy_row(uow, code))
    await audit.record(
        uow,
        principal,
        "approval_policy.set",
        "approval_policy",
        code,
        before=_policy_out(code, before) if before.currency is not None else None,
        after=after,
    )
    return after
