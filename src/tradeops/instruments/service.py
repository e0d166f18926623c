"""Instrument reference data: create, read, list and change what can be traded."""

from __future__ import annotations

from collections.abc import Collection
from decimal import Decimal
from typing import Any

from tradeops.audit import recording as audit
from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.db.uow import UnitOfWork
from tradeops.errors import Conflict, NotFound
from tradeops.instruments import repository as repo
from tradeops.instruments.schemas import InstrumentCreate, InstrumentOut, InstrumentUpdate


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
    created = await uow.row_of(repo.insert_instrument(data.model_dump()), InstrumentOut)
    if created is None:
        raise InstrumentExists(f"Instrument {data.symbol} already exists.")
    await audit.record(
        uow, principal, "instrument.created", "instrument", data.symbol, after=created
    )
    return created


async def get_instrument(uow: UnitOfWork, principal: Principal, symbol: str) -> InstrumentOut:
    authorize(principal, Action.READ_REFERENCE_DATA)
    instrument = await uow.row_of(repo.instrument_by_symbol(symbol), InstrumentOut)
    if instrument is None:
        raise InstrumentNotFound(f"No instrument with symbol {symbol}.")
    return instrument


async def list_instruments(
    uow: UnitOfWork, principal: Principal, *, active: bool | None = None
) -> list[InstrumentOut]:
    authorize(principal, Action.READ_REFERENCE_DATA)
    return await uow.rows_of(repo.instruments_list(active), InstrumentOut)


async def tick_sizes(
    uow: UnitOfWork, principal: Principal, symbols: Collection[str]
) -> dict[str, Decimal]:
    """Each symbol's tick size, in one read: how a list of orders writes its prices."""
    authorize(principal, Action.READ_REFERENCE_DATA)
    if not symbols:
        return {}
    rows = await uow.rows_of(repo.tick_sizes(symbols), repo.TickSize)
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
    after = await uow.row_of(repo.update_instrument(before.symbol, values), InstrumentOut)
    if after is None:  # pragma: no cover - read just above in the same transaction
        raise InstrumentNotFound(f"No instrument with symbol {symbol}.")
    await audit.record(
        uow, principal, "instrument.updated", "instrument", after.symbol, before=before, after=after
    )
    return after
