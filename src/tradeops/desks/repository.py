"""The desks table's statements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

from sqlalchemy import Insert, Select, select
from sqlalchemy.dialects.postgresql import insert

from tradeops.db.base import table_of
from tradeops.db.prepared import Id, query
from tradeops.desks.models import Desk

desks = table_of(Desk)


@dataclass(frozen=True, slots=True)
class DeskRow:
    code: str
    name: str
    time_zone: str
    day_cutoff: time


@dataclass(frozen=True, slots=True)
class DeskKey:
    code: str
    id: int


def all_desks() -> Select[Any]:
    return select(*_SHOWN).order_by(desks.c.code)


_SHOWN = (desks.c.code, desks.c.name, desks.c.time_zone, desks.c.day_cutoff)


def insert_desk(code: str, name: str, time_zone: str, day_cutoff: time) -> Insert:
    """A new desk, or nothing when its code is taken."""
    return (
        insert(desks)
        .values(code=code, name=name, time_zone=time_zone, day_cutoff=day_cutoff)
        .on_conflict_do_nothing(index_elements=["code"])
        .returning(*_SHOWN)
    )


def desks_by_code(codes: list[str]) -> Select[Any]:
    return select(desks.c.code, desks.c.id).where(desks.c.code.in_(codes))


@dataclass(frozen=True, slots=True)
class PolicyRow:
    """A desk's approval policy as stored; `currency` None: the desk has none (the default of
    one approval applies). `bands` are {"min_notional": text, "approvals": int}, lowest first."""

    desk_id: int
    currency: str | None
    bands: list[dict[str, Any]]
    updated_by: str | None
    updated_at: datetime | None


# The desk (None: no such desk) and its policy, bands as one JSON value; amounts as text,
# so no float ever carries them.
APPROVAL_POLICY = query(
    "SELECT d.id AS desk_id, p.currency,"
    " COALESCE((SELECT jsonb_agg(jsonb_build_object('min_notional', b.min_notional::text,"
    "  'approvals', b.approvals) ORDER BY b.min_notional)"
    "  FROM approval_bands b WHERE b.desk_id = d.id), '[]') AS bands,"
    " u.email AS updated_by, p.updated_at"
    " FROM desks d LEFT JOIN desk_approval_policies p ON p.desk_id = d.id"
    " LEFT JOIN users u ON u.id = p.updated_by WHERE d.code = :code",
    PolicyRow,
)

# A policy replaced: its row written and its bands removed (ADD_BANDS then adds the new ones;
# the first band starting at 0 is checked when the transaction commits).
REPLACE_POLICY = query(
    "WITH policy AS (INSERT INTO desk_approval_policies (desk_id, currency, updated_by)"
    "  VALUES (:desk_id, :currency, :updated_by) ON CONFLICT (desk_id) DO UPDATE"
    "  SET currency = EXCLUDED.currency, updated_by = EXCLUDED.updated_by, updated_at = now()"
    "  RETURNING desk_id),"
    " removed AS (DELETE FROM approval_bands WHERE desk_id = :desk_id)"
    " SELECT desk_id AS id FROM policy",
    Id,
)

ADD_BANDS = query(
    "INSERT INTO approval_bands (desk_id, min_notional, approvals)"
    " SELECT :desk_id, b.min_notional, b.approvals"
    " FROM unnest(CAST(:min_notionals AS numeric[]), CAST(:approvals AS integer[]))"
    "  AS b(min_notional, approvals)"
    " RETURNING desk_id AS id",
    Id,
)
