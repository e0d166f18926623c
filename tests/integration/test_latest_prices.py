"""Each instrument's latest price, kept in latest_prices by the publishing statement
(migration 0042) for the portfolio's valuation.

- It is always the first entry of ix_market_snapshots_latest (latest by as_of, ties broken by
  the later row): whatever the order the prices arrive in, old ones after new, the same
  moment from two sources, a resend, several of one instrument in one batch.
- Overlapping batches published at once, in opposite orders: none fails, none deadlocks, and
  the latest is still the snapshots'.
- The portfolio values each position at that price; GET /market-data/{symbol} answers its
  snapshot in one statement (migration 0045), the transaction's bytes, to anyone signed in.
- No request writes the table: the application role may only read it, a temporary table of
  the publisher's does not stand in for it, and a snapshot held as latest cannot be deleted
  from under it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import Cast, bearer, stored_api_key
from tests.integration.test_market_data import MARKET_DATA, at, publish, series, snapshot
from tests.owner import driver_of
from tradeops.auth.principal import Principal, Role
from tradeops.db.uow import UnitOfWork, run_in_transaction
from tradeops.marketdata import service as marketdata

# The snapshots' own answer: the first entry of ix_market_snapshots_latest per instrument.
LATEST_OF_SNAPSHOTS = """
SELECT DISTINCT ON (instrument_id) instrument_id, id, price, as_of FROM market_snapshots
ORDER BY instrument_id, as_of DESC, id DESC
"""
KEPT = "SELECT instrument_id, snapshot_id, price, as_of FROM latest_prices ORDER BY 1"


async def latest(engine: AsyncEngine) -> tuple[list[Any], list[Any]]:
    """(what latest_prices holds, what the snapshots say), each by instrument."""
    async with engine.connect() as conn:
        kept = [tuple(row) for row in await conn.execute(text(KEPT))]
        derived = [tuple(row) for row in await conn.execute(text(LATEST_OF_SNAPSHOTS))]
    return kept, derived


async def test_the_latest_price_is_the_snapshots_whatever_the_order_of_arrival(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    batches = [
        [snapshot(price="101", as_of=at(60))],
        [snapshot(price="99", as_of=at(0))],  # older, arriving later: changes nothing
        [snapshot(price="102", as_of=at(60), source="reuters")],  # same moment, later row
        [snapshot(price="102", as_of=at(60), source="reuters")],  # a resend: nothing stored
        [*series(5, "MSFT"), snapshot(symbol="MSFT", price="7", as_of=at(-5))],
        [snapshot(price="103", as_of=at(30)), snapshot(symbol="MSFT", price="8", as_of=at(9))],
    ]
    for batch in batches:
        response = await publish(client, cast["admin"], batch)
        assert response.status_code == 201, response.text
        kept, derived = await latest(owner_engine)
        assert kept == derived, batch
    prices = {row[0]: str(row[2]) for row in kept}
    assert sorted(prices.values()) == ["102.000000", "8.000000"]


async def test_overlapping_batches_at_once_neither_fail_nor_deadlock(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    aapl, msft = series(200, "AAPL"), series(200, "MSFT")
    batches = [aapl + msft, msft[::-1] + aapl[::-1], aapl[::2], msft[1::2]] * 2
    responses = await asyncio.gather(*(publish(client, cast["admin"], b) for b in batches))
    assert [r.status_code for r in responses] == [201] * len(batches), [r.text for r in responses]
    kept, derived = await latest(owner_engine)
    assert kept == derived and len(kept) == 2


async def test_the_portfolio_values_each_position_at_the_latest_price(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    async with owner_engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO positions (desk_id, client_id, instrument_id, quantity, avg_cost,"
                " cost_basis) SELECT c.desk_id, c.id, i.id, 10, 100, 1000"
                " FROM clients c, instruments i WHERE c.external_id = 'CUST-1001'"
            )
        )
    for batch in (
        [snapshot(price="110", as_of=at(60)), snapshot(symbol="MSFT", price="50", as_of=at(0))],
        [snapshot(price="90", as_of=at(0))],  # older: the portfolio keeps 110
    ):
        assert (await publish(client, cast["admin"], batch)).status_code == 201
    shown = await client.get("/api/v1/clients/CUST-1001/portfolio", headers=cast["trader"])
    assert shown.status_code == 200, shown.text
    valued = {p["symbol"]: (p["last_price"], p["market_value"]) for p in shown.json()["positions"]}
    assert valued == {"AAPL": ("110", "1100"), "MSFT": ("50", "500")}


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO latest_prices SELECT id, 0, 1, now() FROM instruments",
        "UPDATE latest_prices SET price = 1",
        "DELETE FROM latest_prices",
    ],
)
async def test_no_request_writes_a_latest_price(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, statement: str
) -> None:
    """Not even an admin's, who may publish: a price is set by its snapshot only."""
    assert (await publish(client, cast["admin"], [snapshot()])).status_code == 201
    async with owner_engine.connect() as conn, conn.begin() as tx:
        await conn.execute(text("SELECT 1"))
        admin = Principal(cast.ids["admin"], "admin@test.bank", Role.ADMIN, all_desks=True)
        await UnitOfWork(await driver_of(conn)).set_context(admin, "latest-test")
        assert await conn.scalar(text("SELECT count(*) FROM latest_prices")) == 1, "it reads"
        with pytest.raises(DBAPIError, match="permission denied for table latest_prices"):
            await conn.execute(text(statement))
        await tx.rollback()


async def test_a_snapshot_held_as_latest_cannot_be_deleted(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    batch = [snapshot(price="1", as_of=at(0)), snapshot(price="2", as_of=at(1))]
    assert (await publish(client, cast["admin"], batch)).status_code == 201
    async with owner_engine.begin() as conn:  # an older one may go
        await conn.execute(text("DELETE FROM market_snapshots WHERE price = 1"))
    with pytest.raises(DBAPIError, match="fk_latest_prices_snapshot_id_market_snapshots"):
        async with owner_engine.begin() as conn:
            await conn.execute(text("DELETE FROM market_snapshots WHERE price = 2"))


async def test_a_publishers_temporary_table_does_not_stand_in_for_the_latest_prices(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    """The trigger runs as the table's owner with pg_temp last on its search_path: a
    temporary table named latest_prices, made by the publishing session, is not written."""
    async with owner_engine.connect() as conn, conn.begin() as tx:
        await conn.execute(text("SELECT 1"))
        admin = Principal(cast.ids["admin"], "admin@test.bank", Role.ADMIN, all_desks=True)
        await UnitOfWork(await driver_of(conn)).set_context(admin, "latest-test")
        await conn.execute(text("CREATE TEMP TABLE latest_prices (LIKE public.latest_prices)"))
        await conn.execute(
            text(
                "INSERT INTO market_snapshots (instrument_id, price, as_of, source)"
                " SELECT id, 7, now(), 'sql' FROM instruments WHERE symbol = 'AAPL'"
            )
        )
        kept = await conn.scalar(text("SELECT count(*) FROM public.latest_prices"))
        shadow = await conn.scalar(text("SELECT count(*) FROM pg_temp.latest_prices"))
        await tx.rollback()
    assert (kept, shadow) == (1, 0)


async def test_the_latest_price_read_in_one_statement_is_the_transactions(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    batch = [snapshot(price="101.5", as_of=at(60)), snapshot(price="99", as_of=at(0))]
    assert (await publish(client, cast["admin"], batch)).status_code == 201
    read_only = await stored_api_key(owner_engine, "agent@test.bank", ["orders:read"])
    answers = [
        await client.get(f"{MARKET_DATA}/aapl", headers=headers)
        for headers in (cast["trader_fi"], cast["risk"], bearer(read_only))
    ]
    admin = Principal(cast.ids["admin"], "admin@test.bank", Role.ADMIN, all_desks=True)
    in_transaction = await run_in_transaction(
        app.state.db, admin, lambda uow: marketdata.latest(uow, admin, "AAPL")
    )
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.content == in_transaction.model_dump_json().encode()
    assert answers[0].json()["price"] == "101.5"
    for symbol, headers, status in (
        ("MSFT", cast["trader"], 404),  # no price yet
        ("NOPE", cast["trader"], 404),  # no such instrument
        ("AAPL", cast["nobody"], 401),
        ("AAPL", {"Authorization": "Bearer not-a-credential"}, 401),
    ):
        answer = await client.get(f"{MARKET_DATA}/{symbol}", headers=headers)
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
