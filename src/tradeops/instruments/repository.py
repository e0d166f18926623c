"""The instruments table's statements; rows come back with InstrumentOut's columns."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Insert, Select, Update, func, select, update
from sqlalchemy.dialects.postgresql import insert

from tradeops.db.base import table_of
from tradeops.instruments.models import Instrument

instruments = table_of(Instrument)
_COLUMNS = [c for c in instruments.c if c.name != "id"]


@dataclass(frozen=True, slots=True)
class TickSize:
    symbol: str
    tick_size: Decimal


def insert_instrument(values: dict[str, Any]) -> Insert:
    """A new instrument, or nothing when its symbol is taken."""
    return (
        insert(instruments)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["symbol"])
        .returning(*_COLUMNS)
    )


def instrument_by_symbol(symbol: str) -> Select[Any]:
    return select(*_COLUMNS).where(instruments.c.symbol == symbol.upper())


def instruments_list(active: bool | None) -> Select[Any]:
    statement = select(*_COLUMNS).order_by(instruments.c.symbol)
    return statement if active is None else statement.where(instruments.c.active == active)


def tick_sizes(symbols: Collection[str]) -> Select[Any]:
    return select(instruments.c.symbol, instruments.c.tick_size).where(
        instruments.c.symbol.in_(sorted(symbols))
    )


def update_instrument(symbol: str, values: dict[str, Any]) -> Update:
    return (
        update(instruments)
        .where(instruments.c.symbol == symbol)
        .values(**values, updated_at=func.now())
        .returning(*_COLUMNS)
    )
