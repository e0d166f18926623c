"""Factories: reference data as tests need it, created through the real services."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tradeops.auth.principal import SYSTEM
from tradeops.clients import service as clients
from tradeops.clients.schemas import ClientCreate
from tradeops.db.uow import run_in_transaction
from tradeops.desks import service as desks
from tradeops.desks.service import DeskIn
from tradeops.instruments import service as instruments
from tradeops.instruments.schemas import InstrumentCreate

SEED_ORDER: dict[str, Any] = {
    "client_id": "CUST-1001",
    "symbol": "AAPL",
    "side": "BUY",
    "quantity": 50,
    "price": 192.55,
}


async def make_desk(engine: AsyncEngine, code: str = "EQ-US", name: str = "US Equities") -> None:
    await run_in_transaction(
        engine, SYSTEM, lambda uow: desks.create_desk(uow, SYSTEM, DeskIn(code=code, name=name))
    )


async def make_client(
    engine: AsyncEngine, client_id: str = "CUST-1001", desk: str = "EQ-US", status: str = "ACTIVE"
) -> None:
    data = ClientCreate(client_id=client_id, name=f"Client {client_id}", desk=desk, status=status)  # type: ignore[arg-type]
    await run_in_transaction(engine, SYSTEM, lambda uow: clients.create_client(uow, SYSTEM, data))


async def make_instrument(
    engine: AsyncEngine,
    symbol: str = "AAPL",
    *,
    currency: str = "USD",
    lot_size: str = "1",
    tick_size: str = "0.01",
    restricted: bool = False,
    active: bool = True,
) -> None:
    data = InstrumentCreate(
        symbol=symbol,
        name=f"{symbol} Inc.",
        currency=currency,
        lot_size=Decimal(lot_size),
        tick_size=Decimal(tick_size),
        restricted=restricted,
        active=active,
    )
    await run_in_transaction(
        engine, SYSTEM, lambda uow: instruments.create_instrument(uow, SYSTEM, data)
    )


async def make_reference_data(engine: AsyncEngine) -> None:
    """Two desks, CUST-1001/1002 on EQ-US, CUST-2001 on FI-EU, AAPL and MSFT."""
    await make_desk(engine, "EQ-US", "US Equities")
    await make_desk(engine, "FI-EU", "European Fixed Income")
    await make_client(engine, "CUST-1001", "EQ-US")
    await make_client(engine, "CUST-1002", "EQ-US")
    await make_client(engine, "CUST-2001", "FI-EU")
    await make_instrument(engine, "AAPL")
    await make_instrument(engine, "MSFT")
