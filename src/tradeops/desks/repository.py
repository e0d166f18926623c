"""The desks table's statements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time
from typing import Any

from sqlalchemy import Insert, Select, select
from sqlalchemy.dialects.postgresql import insert

from tradeops.db.base import table_of
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
