"""The desks table's statements."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class DeskKey:
    code: str
    id: int


def all_desks() -> Select[Any]:
    return select(desks.c.code, desks.c.name).order_by(desks.c.code)


def insert_desk(code: str, name: str) -> Insert:
    """A new desk, or nothing when its code is taken."""
    return (
        insert(desks)
        .values(code=code, name=name)
        .on_conflict_do_nothing(index_elements=["code"])
        .returning(desks.c.code, desks.c.name)
    )


def desks_by_code(codes: list[str]) -> Select[Any]:
    return select(desks.c.code, desks.c.id).where(desks.c.code.in_(codes))
