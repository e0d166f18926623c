"""The database backs every rule the API enforces, even for a writer that skips the service."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import make_client, make_instrument, make_reference_data
from tradeops.db.errors import problem_for
from tradeops.db.uow import sqlstate_of


@pytest.fixture
async def refdata(owner_engine: AsyncEngine) -> None:
    await make_reference_data(owner_engine)
    await make_instrument(owner_engine, "BLOCK", lot_size="100")
    await make_instrument(owner_engine, "OLD", active=False)
    await make_client(owner_engine, "CUST-0001", status="INACTIVE")


INSERT = text(
    "INSERT INTO orders (desk_id, client_id, instrument_id, side, order_type, quantity, price,"
    " currency, created_by)"
    " SELECT c.desk_id, c.id, i.id, :side, :order_type, :quantity, :price, :currency, 0"
    " FROM clients c, instruments i WHERE c.external_id = :client AND i.symbol = :symbol"
)
GOOD: dict[str, Any] = {
    "side": "BUY",
    "order_type": "LIMIT",
    "quantity": 10,
    "price": 1.5,
    "currency": "USD",
    "client": "CUST-1001",
    "symbol": "AAPL",
}
VIOLATIONS = [
    ("side", {"side": "HOLD"}),
    ("order_type", {"order_type": "STOP"}),
    ("quantity_zero", {"quantity": 0}),
    ("price_negative", {"price": -1}),
    ("limit_without_price", {"price": None}),
    ("market_with_price", {"order_type": "MARKET"}),
    ("currency_format", {"currency": "usd"}),
    ("currency_differs", {"currency": "EUR"}),
    ("lot_size", {"symbol": "BLOCK", "quantity": 150}),
    ("tick_size", {"price": 1.555}),
    ("inactive_instrument", {"symbol": "OLD"}),
    ("inactive_client", {"client": "CUST-0001"}),
]


async def test_a_valid_row_is_accepted(owner_engine: AsyncEngine, refdata: None) -> None:
    async with owner_engine.begin() as conn:
        assert (await conn.execute(INSERT, GOOD)).rowcount == 1


@pytest.mark.parametrize(("case", "change"), VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
async def test_constraint_rejects_invalid_order(
    owner_engine: AsyncEngine, refdata: None, case: str, change: dict[str, Any]
) -> None:
    with pytest.raises(DBAPIError) as caught:
        async with owner_engine.begin() as conn:
            await conn.execute(INSERT, {**GOOD, **change})
    assert sqlstate_of(caught.value) in {"23514", "23503"}
    assert problem_for(caught.value).status == 422


async def test_sqlstate_mapping_on_real_errors(owner_engine: AsyncEngine, refdata: None) -> None:
    async def error_of(*statements: str) -> DBAPIError:
        with pytest.raises(DBAPIError) as caught:
            async with owner_engine.begin() as conn:
                for sql in statements:
                    await conn.execute(text(sql))
        return caught.value

    unique = await error_of("INSERT INTO desks (code, name) VALUES ('EQ-US', 'again')")
    assert problem_for(unique).status == 409
    fk = await error_of("INSERT INTO clients (external_id, name, desk_id) VALUES ('X1', 'x', 999)")
    assert problem_for(fk).status == 422
    timeout = await error_of("SET LOCAL statement_timeout = 50", "SELECT pg_sleep(2)")
    assert problem_for(timeout).status == 504
    busy = await error_of("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
    problem = problem_for(busy)
    assert (problem.status, problem.retry_after) == (503, 1)
    assert "pg_sleep" not in problem.detail and "conflict" not in problem.detail
