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


# --- the rules of the BEFORE INSERT triggers on orders, by what each says ------------------

# A writer that names its own ids (the owner, skipping intake's lookups).
INSERT_BY_IDS = text(
    "INSERT INTO orders (desk_id, client_id, instrument_id, side, order_type, quantity, price,"
    " currency, created_by, time_in_force, expire_at, approvals_required)"
    " VALUES (:desk_id, :client_id, :instrument_id, 'BUY', 'LIMIT', :quantity, :price,"
    " :currency, 0, :time_in_force, :expire_at, 5)"
    " RETURNING id, approvals_required, expire_at"
)
IDS = text(
    "SELECT (SELECT id FROM desks WHERE code = :desk) AS desk_id,"
    " (SELECT id FROM clients WHERE external_id = :client) AS client_id,"
    " (SELECT id FROM instruments WHERE symbol = :symbol) AS instrument_id"
)
BIRTH_RULES = [
    ("unknown instrument", {"instrument_id": -1}),
    ("unknown client", {"client_id": -1}),
    ("instrument OLD is not active", {"symbol": "OLD"}),
    ("client CUST-0001 is not active", {"client": "CUST-0001"}),
    ("quantity is not a multiple of the lot size", {"symbol": "BLOCK", "quantity": 150}),
    ("price is not a multiple of the tick size", {"price": "1.555"}),
    ("currency differs from the instrument", {"currency": "EUR"}),
    ("desk differs from the client's desk", {"desk": "FI-EU"}),
    ("a GTD order expires in the future", {"time_in_force": "GTD", "expire_at": "past"}),
]


async def _insert_by_ids(conn: Any, **change: Any) -> Any:
    names = {"desk": "EQ-US", "client": "CUST-1001", "symbol": "AAPL"}
    names |= {k: change.pop(k) for k in list(change) if k in names}
    ids = dict((await conn.execute(IDS, names)).mappings().one())
    values = {"quantity": 10, "price": "1.5", "currency": "USD", "time_in_force": "DAY"}
    values |= {"expire_at": None} | ids | change
    if values["expire_at"] == "past":
        values["expire_at"] = (
            await conn.execute(text("SELECT now() - interval '1 minute'"))
        ).scalar()
    return (await conn.execute(INSERT_BY_IDS, values)).mappings().one()


@pytest.mark.parametrize(("says", "change"), BIRTH_RULES, ids=[r[0] for r in BIRTH_RULES])
async def test_a_new_orders_rules_refuse_it_with_what_they_say(
    owner_engine: AsyncEngine, refdata: None, says: str, change: dict[str, Any]
) -> None:
    """Each rule of the trigger, refused by its own words, before any CHECK constraint or
    foreign key: the instrument's and the client's, then the time in force's."""
    with pytest.raises(DBAPIError, match=says):
        async with owner_engine.begin() as conn:
            await _insert_by_ids(conn, **change)


async def test_a_new_order_is_born_with_its_approvals_and_its_days_end(
    owner_engine: AsyncEngine, refdata: None
) -> None:
    """Whatever a writer wrote, the trigger sets the approvals the desk's policy asks (none
    here: one) and a DAY order's end at its desk's cut-off; a GTD order keeps its own."""
    async with owner_engine.begin() as conn:
        day = await _insert_by_ids(conn)
        expected = await conn.scalar(
            text(
                "SELECT tradeops_day_end(time_zone, day_cutoff, now()) FROM desks WHERE id ="
                " (SELECT desk_id FROM orders WHERE id = :id)"
            ),
            {"id": day["id"]},
        )
        gtd = await _insert_by_ids(conn, time_in_force="GTD", expire_at=expected)
    assert (day["approvals_required"], day["expire_at"]) == (1, expected)
    assert (gtd["approvals_required"], gtd["expire_at"]) == (1, expected)


UPDATE_RULES = [
    ("quantity is not a multiple of the lot size", "quantity = 150"),
    ("price is not a multiple of the tick size", "price = 1.555"),
    ("currency differs from the instrument", "currency = 'EUR'"),
    (
        "desk differs from the client's desk",
        "desk_id = (SELECT id FROM desks WHERE code = 'FI-EU')",
    ),
]


@pytest.mark.parametrize(("says", "change"), UPDATE_RULES, ids=[r[0] for r in UPDATE_RULES])
async def test_an_orders_terms_changed_in_place_keep_the_instruments_rules(
    owner_engine: AsyncEngine, refdata: None, says: str, change: str
) -> None:
    async with owner_engine.begin() as conn:
        order = await _insert_by_ids(conn, symbol="BLOCK", quantity=100)
    with pytest.raises(DBAPIError, match=says):
        async with owner_engine.begin() as conn:
            await conn.execute(text(f"UPDATE orders SET {change} WHERE id = :id"), order)
