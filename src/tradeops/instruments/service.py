"""Instrument reference data: create, read, list and change what can be traded."""

from __future__ import annotations

from collections.abc import Collection
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert

from tradeops.audit import service as audit
from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.db.base import table_of
from tradeops.db.uow import UnitOfWork
from tradeops.errors import Conflict, NotFound
from tradeops.instruments.models import Instrument
from tradeops.instruments.schemas import InstrumentCreate, InstrumentOut, InstrumentUpdate

instruments = table_of(Instrument)
_COLUMNS = [c for c in instruments.c if c.name != "id"]


class InstrumentNotFound(NotFound):
    slug = "instrument-not-found"
    title = "Instrument not found"


class InstrumentExists(Conflict):
    slug = "instrument-exists"
    title = "Instrument already exists"


async def create_instrument(
    uow: UnitOfWork, principal: Principal, data: InstrumentCreate
) -> InstrumentOut:
    authorize(principal, Action.MANAGE_INSTRUMENTS)
    if data.restricted:
        authorize(principal, Action.MANAGE_RESTRICTED_LIST)
    row = await uow.one_or_none(
        insert(instruments)
        .values(**data.model_dump())
        .on_conflict_do_nothing(index_elements=["symbol"])
        .returning(*_COLUMNS)
    )
    if row is None:
        raise InstrumentExists(f"Instrument {data.symbol} already exists.")
    created = InstrumentOut.model_validate(row._mapping)
    await audit.record(
        uow, principal, "instrument.created", "instrument", data.symbol, after=created
    )
    return created


async def get_instrument(uow: UnitOfWork, principal: Principal, symbol: str) -> InstrumentOut:
    authorize(principal, Action.READ_REFERENCE_DATA)
    row = await uow.one_or_none(select(*_COLUMNS).where(instruments.c.symbol == symbol.upper()))
    if row is None:
        raise InstrumentNotFound(f"No instrument with symbol {symbol}.")
    return InstrumentOut.model_validate(row._mapping)


async def list_instruments(
    uow: UnitOfWork, principal: Principal, *, active: bool | None = None
) -> list[InstrumentOut]:
    authorize(principal, Action.READ_REFERENCE_DATA)
    statement = select(*_COLUMNS).order_by(instruments.c.symbol)
    if active is not None:
        statement = statement.where(instruments.c.active == active)
    return [InstrumentOut.model_validate(r._mapping) for r in await uow.execute(statement)]


async def tick_sizes(
    uow: UnitOfWork, principal: Principal, symbols: Collection[str]
) -> dict[str, Decimal]:
    """Each symbol's tick size, in one read: how a list of orders writes its prices."""
    authorize(principal, Action.READ_REFERENCE_DATA)
    if not symbols:
        return {}
    rows = await uow.execute(
        select(instruments.c.symbol, instruments.c.tick_size).where(
            instruments.c.symbol.in_(sorted(symbols))
        )
    )
    return {row.symbol: row.tick_size for row in rows}


async def update_instrument(
    uow: UnitOfWork, principal: Principal, symbol: str, changes: InstrumentUpdate
) -> InstrumentOut:
    values: dict[str, Any] = changes.model_dump(exclude_unset=True, exclude_none=True)
    if "restricted" in values or not values:
        authorize(principal, Action.MANAGE_RESTRICTED_LIST)
    if values.keys() - {"restricted"}:
        authorize(principal, Action.MANAGE_INSTRUMENTS)
    before = await get_instrument(uow, principal, symbol)
    if not values:
        return before
    row = await uow.one_or_none(
        update(instruments)
        .where(instruments.c.symbol == before.symbol)
        .values(**values, updated_at=func.now())
        .returning(*_COLUMNS)
    )
    if row is None:  # pragma: no cover - read just above in the same transaction
        raise InstrumentNotFound(f"No instrument with symbol {symbol}.")
    after = InstrumentOut.model_validate(row._mapping)
    await audit.record(
        uow, principal, "instrument.updated", "instrument", after.symbol, before=before, after=after
    )
    return after
