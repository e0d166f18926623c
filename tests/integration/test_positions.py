"""Positions and portfolios: the arithmetic against hand-computed cases (partial closes,
flips, unpriced and flat positions, two currencies), filters, and who sees what."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import Cast, approved_order, bearer, make_api_key, make_instrument
from tests.owner import driver_of
from tradeops.auth.principal import Principal, Role
from tradeops.db.uow import UnitOfWork, sqlstate_of
from tradeops.positions.schemas import Portfolio

API = "/api/v1"


async def trade(
    client: httpx.AsyncClient,
    cast: Cast,
    engine: AsyncEngine,
    side: str,
    quantity: str,
    price: str,
    symbol: str = "AAPL",
    client_id: str = "CUST-1001",
) -> None:
    """A MARKET order for `quantity`, approved and filled in one fill at `price`."""
    maker = "trader_fi" if client_id == "CUST-2001" else "trader"
    order_id = await approved_order(
        client,
        cast,
        engine,
        maker=maker,
        client_id=client_id,
        symbol=symbol,
        side=side,
        quantity=quantity,
        price=None,
        order_type="MARKET",
    )
    fill = {
        "quantity": quantity,
        "price": price,
        "venue": "XNAS",
        "executed_at": "2026-11-23T14:30:00Z",
        "external_id": f"T-{uuid.uuid4().hex}",
    }
    done = await client.post(
        f"{API}/orders/{order_id}/executions", json=fill, headers=cast["admin"]
    )
    assert done.status_code == 201, done.text


async def publish(client: httpx.AsyncClient, cast: Cast, *prices: tuple[str, str, str]) -> None:
    snapshots = [
        {"symbol": symbol, "price": price, "as_of": as_of, "source": "test"}
        for symbol, price, as_of in prices
    ]
    published = await client.post(
        f"{API}/market-data/snapshots", json={"snapshots": snapshots}, headers=cast["admin"]
    )
    assert published.status_code == 201, published.text


async def portfolio(
    client: httpx.AsyncClient, cast: Cast, who: str = "trader", client_id: str = "CUST-1001"
) -> httpx.Response:
    return await client.get(f"{API}/clients/{client_id}/portfolio", headers=cast[who])


@pytest.fixture
async def book(client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine) -> None:
    """CUST-1001's trades, each a hand-computed case (see the expected portfolio below)."""
    for symbol in ("NVDA", "JPM"):
        await make_instrument(owner_engine, symbol)
    await make_instrument(owner_engine, "DBR-2034", currency="EUR", tick_size="0.001")

    async def fills(symbol: str, *steps: tuple[str, str, str]) -> None:
        for side, quantity, price in steps:
            await trade(client, cast, owner_engine, side, quantity, price, symbol)

    # Long 30 at a cost of 3200; 10 sold @ 120 (realizes 1200 - 3200 * 10 / 30); the other
    # 20 and 10 more sold @ 105: closes at a loss of 2100 - 2133.33…, opens 10 short @ 105.
    await fills("AAPL", ("BUY", "10", "100"), ("BUY", "20", "110"))
    await fills("AAPL", ("SELL", "10", "120"), ("SELL", "30", "105"))
    # Cost 32 for 3; one sold @ 12 takes out 32 / 3 = 10.666666666667 of cost.
    await fills("MSFT", ("BUY", "1", "10"), ("BUY", "2", "11"), ("SELL", "1", "12"))
    await fills("NVDA", ("BUY", "5", "120"))  # no price published: unpriced
    await fills("JPM", ("BUY", "4", "50"), ("SELL", "4", "55"))  # flat, realized 20
    await fills("DBR-2034", ("BUY", "1000", "101.25"))
    await publish(
        client,
        cast,
        ("AAPL", "90", "2026-11-23T15:00:00Z"),
        ("AAPL", "100", "2026-11-23T16:00:00Z"),  # the latest: this one values the position
        ("MSFT", "12.5", "2026-11-23T16:00:00Z"),
        ("DBR-2034", "101.5", "2026-11-23T16:00:00Z"),
    )


def priced(price: str, as_of: str = "2026-11-23T16:00:00.000000Z") -> dict[str, Any]:
    return {"priced": True, "last_price": price, "price_as_of": as_of}


UNPRICED = {"priced": False, "last_price": None, "price_as_of": None}

EXPECTED_POSITIONS = [
    {
        "symbol": "AAPL",
        "currency": "USD",
        "quantity": "-10",
        "avg_cost": "105",
        "cost_basis": "-1050",
        **priced("100"),
        "market_value": "-1000",
        "unrealized_pnl": "50",  # (105 - 100) * 10, short
        "realized_pnl": "100",  # bought 30 for 3200, sold 30 for 1200 + 2100
    },
    {
        "symbol": "DBR-2034",
        "currency": "EUR",
        "quantity": "1000",
        "avg_cost": "101.25",
        "cost_basis": "101250",
        **priced("101.5"),
        "market_value": "101500",
        "unrealized_pnl": "250",
        "realized_pnl": "0",
    },
    {
        "symbol": "JPM",
        "currency": "USD",
        "quantity": "0",
        "avg_cost": None,
        "cost_basis": "0",
        **UNPRICED,
        "market_value": "0",  # flat: worth nothing, priced or not
        "unrealized_pnl": "0",
        "realized_pnl": "20",
    },
    {
        "symbol": "MSFT",
        "currency": "USD",
        "quantity": "2",
        "avg_cost": "10.6666666667",  # 21.333333333333 / 2 = 10.6666666666|665, 10 places
        "cost_basis": "21.333333333333",  # 32 - 10.666666666667
        **priced("12.5"),
        "market_value": "25",
        "unrealized_pnl": "3.666666666667",
        "realized_pnl": "1.333333333333",  # 12 - 10.666666666667
    },
    {
        "symbol": "NVDA",
        "currency": "USD",
        "quantity": "5",
        "avg_cost": "120",
        "cost_basis": "600",
        **UNPRICED,
        "market_value": None,
        "unrealized_pnl": None,
        "realized_pnl": "0",
    },
]

EXPECTED_TOTALS = [
    {
        "currency": "EUR",
        "positions": 1,
        "unpriced_positions": 0,
        "market_value": "101500",
        "cost_basis": "101250",
        "unrealized_pnl": "250",
        "realized_pnl": "0",
    },
    {
        "currency": "USD",
        "positions": 4,
        "unpriced_positions": 1,  # NVDA: no partial sums
        "market_value": None,
        "cost_basis": "-428.666666666667",  # -1050 + 0 + 21.333333333333 + 600
        "unrealized_pnl": None,
        "realized_pnl": "121.333333333333",  # 100 + 20 + 1.333333333333
    },
]


async def test_portfolio_matches_the_hand_computed_book(
    client: httpx.AsyncClient, cast: Cast, book: None
) -> None:
    response = await portfolio(client, cast)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["client_id"], body["desk"]) == ("CUST-1001", "EQ-US")
    assert body["positions"] == EXPECTED_POSITIONS
    assert body["totals"] == EXPECTED_TOTALS
    as_of = Portfolio.model_validate_json(response.content).as_of
    assert abs(datetime.now(UTC) - as_of) < timedelta(minutes=1)


async def test_the_document_postgresql_builds_is_the_documented_schema_as_we_write_it(
    client: httpx.AsyncClient, cast: Cast, book: None
) -> None:
    """The portfolio's JSON comes from SQL: it must have exactly the fields of the schema in
    /docs, and write decimals as every other endpoint does (tradeops.decimals.plain)."""
    raw = (await portfolio(client, cast)).json()
    ours = Portfolio.model_validate(raw).model_dump(mode="json")
    assert list(raw) == list(ours)
    for section in ("positions", "totals"):
        for sent, written in zip(raw[section], ours[section], strict=True):
            assert list(sent) == list(written)
            sent.pop("price_as_of", None)  # both ISO 8601, ours without zero microseconds
            written.pop("price_as_of", None)
            assert sent == written


async def test_portfolio_totals_are_complete_once_every_position_is_priced(
    client: httpx.AsyncClient, cast: Cast, book: None
) -> None:
    await publish(client, cast, ("NVDA", "118.4", "2026-11-23T16:00:00Z"))
    totals = (await portfolio(client, cast)).json()["totals"]
    assert totals[1] == {
        **EXPECTED_TOTALS[1],
        "unpriced_positions": 0,
        "market_value": "-383",  # -1000 + 0 + 25 + 592
        "unrealized_pnl": "45.666666666667",  # 50 + 0 + 3.666666666667 - 8
    }


async def test_positions_list_what_the_fills_booked(
    client: httpx.AsyncClient, cast: Cast, book: None
) -> None:
    page = await client.get(f"{API}/positions", headers=cast["trader"])
    assert page.status_code == 200, page.text
    by_symbol = {p["symbol"]: p for p in page.json()["items"]}
    expected = {p["symbol"]: p for p in EXPECTED_POSITIONS}
    assert set(by_symbol) == set(expected)
    for symbol, position in by_symbol.items():
        fields = ("quantity", "avg_cost", "cost_basis", "realized_pnl", "currency")
        assert {f: position[f] for f in fields} == {f: expected[symbol][f] for f in fields}
        assert (position["client_id"], position["desk"]) == ("CUST-1001", "EQ-US")
    assert by_symbol["AAPL"]["version"] == 5  # opened, then four fills


async def test_a_client_without_positions_has_an_empty_portfolio(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    body = (await portfolio(client, cast, client_id="CUST-1002")).json()
    assert (body["positions"], body["totals"]) == ([], [])


@pytest.mark.parametrize(
    ("who", "client_id", "status"),
    [
        ("trader", "CUST-1001", 200),
        ("agent", "CUST-1001", 200),
        ("risk", "CUST-2001", 200),
        ("trader_fi", "CUST-1001", 404),  # another desk's client: not found, not forbidden
        ("trader", "CUST-2001", 404),
        ("admin", "CUST-9999", 404),
    ],
)
async def test_portfolio_is_readable_on_the_clients_desk_only(
    client: httpx.AsyncClient, cast: Cast, who: str, client_id: str, status: int
) -> None:
    response = await portfolio(client, cast, who, client_id)
    assert response.status_code == status, response.text
    if status == 404:
        assert response.json()["type"].endswith("/client-not-found")


async def test_a_key_needs_positions_read(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    _, without = await make_api_key(owner_engine, "trader@test.bank", ["orders:read"])
    _, with_scope = await make_api_key(owner_engine, "trader@test.bank", ["positions:read"])
    for path in ("/clients/CUST-1001/portfolio", "/positions"):
        assert (await client.get(f"{API}{path}", headers=bearer(without))).status_code == 403
        assert (await client.get(f"{API}{path}", headers=bearer(with_scope))).status_code == 200


# --- GET /positions filters and pages ----------------------------------------------------------


@pytest.fixture
async def spread(client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine) -> None:
    """CUST-1001 long AAPL and flat MSFT, CUST-1002 long AAPL, CUST-2001 (FI-EU) long MSFT."""
    await trade(client, cast, owner_engine, "BUY", "10", "100", "AAPL", "CUST-1001")
    await trade(client, cast, owner_engine, "BUY", "5", "20", "MSFT", "CUST-1001")
    await trade(client, cast, owner_engine, "SELL", "5", "21", "MSFT", "CUST-1001")
    await trade(client, cast, owner_engine, "BUY", "7", "100", "AAPL", "CUST-1002")
    await trade(client, cast, owner_engine, "BUY", "3", "20", "MSFT", "CUST-2001")


async def listed(
    client: httpx.AsyncClient, cast: Cast, who: str = "risk", **params: Any
) -> list[tuple[str, str]]:
    page = await client.get(f"{API}/positions", params=params, headers=cast[who])
    assert page.status_code == 200, page.text
    return [(p["client_id"], p["symbol"]) for p in page.json()["items"]]


@pytest.mark.parametrize(
    ("who", "params", "expected"),
    [
        ("trader", {}, [("CUST-1001", "AAPL"), ("CUST-1001", "MSFT"), ("CUST-1002", "AAPL")]),
        ("trader_fi", {}, [("CUST-2001", "MSFT")]),
        ("risk", {"symbol": "msft"}, [("CUST-1001", "MSFT"), ("CUST-2001", "MSFT")]),
        ("risk", {"client_id": "CUST-1002"}, [("CUST-1002", "AAPL")]),
        ("risk", {"desk": "FI-EU"}, [("CUST-2001", "MSFT")]),
        ("trader", {"desk": "FI-EU"}, []),
        ("trader", {"open_only": "true"}, [("CUST-1001", "AAPL"), ("CUST-1002", "AAPL")]),
    ],
)
async def test_positions_filter_and_show_only_the_callers_desks(
    client: httpx.AsyncClient,
    cast: Cast,
    spread: None,
    who: str,
    params: dict[str, str],
    expected: list[tuple[str, str]],
) -> None:
    assert await listed(client, cast, who, **params) == expected


async def test_positions_page_through_with_the_cursor(
    client: httpx.AsyncClient, cast: Cast, spread: None
) -> None:
    seen: list[tuple[str, str]] = []
    after = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 2, **({"after": after} if after else {})}
        page = (await client.get(f"{API}/positions", params=params, headers=cast["risk"])).json()
        seen += [(p["client_id"], p["symbol"]) for p in page["items"]]
        after = page["next_cursor"]
        if after is None:
            break
    assert seen == await listed(client, cast)
    assert len(seen) == 4


@pytest.mark.parametrize("cursor", ["x", "1", "1.2.3", "99999999999999999999.1", "-1.2"])
async def test_a_bad_cursor_is_a_422(client: httpx.AsyncClient, cast: Cast, cursor: str) -> None:
    page = await client.get(f"{API}/positions", params={"after": cursor}, headers=cast["risk"])
    assert page.status_code == 422
    assert page.json()["errors"][0]["field"] == "query.after"


# --- row-level security ------------------------------------------------------------------------


async def as_trader(engine: AsyncEngine, cast: Cast, statement: str) -> list[Any]:
    async with engine.connect() as conn, conn.begin() as tx:
        eq_us = await conn.scalar(text("SELECT id FROM desks WHERE code = 'EQ-US'"))
        trader = Principal(cast.ids["trader"], "trader@test.bank", Role.TRADER, frozenset({eq_us}))
        await UnitOfWork(await driver_of(conn)).set_context(trader, "rls-test")
        try:
            return list((await conn.execute(text(statement))).all())
        finally:
            await tx.rollback()


async def test_row_level_security_shows_a_trader_only_their_desks_fills_and_positions(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, spread: None
) -> None:
    clients = await as_trader(
        owner_engine,
        cast,
        "SELECT DISTINCT c.external_id FROM positions p JOIN clients c ON c.id = p.client_id",
    )
    assert sorted(r[0] for r in clients) == ["CUST-1001", "CUST-1002"]
    desks = await as_trader(owner_engine, cast, "SELECT DISTINCT desk_id FROM executions")
    assert len(desks) == 1


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE positions SET quantity = 1000 RETURNING 1",
        "INSERT INTO positions (desk_id, client_id, instrument_id)"
        " SELECT c.desk_id, c.id, i.id FROM clients c, instruments i"
        " WHERE c.external_id = 'CUST-1002' AND i.symbol = 'MSFT' RETURNING 1",
        "INSERT INTO executions (order_id, desk_id, quantity, price, venue, executed_at,"
        " external_id, recorded_by) SELECT id, desk_id, 1, 1, 'X', now(), 'RLS-1',"
        " tradeops_user_id() FROM orders WHERE status = 'APPROVED' RETURNING 1",
    ],
    ids=["update position", "open position", "record fill"],
)
async def test_a_trader_cannot_change_positions_or_record_fills_even_in_sql(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, spread: None, statement: str
) -> None:
    await approved_order(client, cast, owner_engine)  # a fillable order for the fill case
    try:
        changed = await as_trader(owner_engine, cast, statement)
    except DBAPIError as refused:
        assert sqlstate_of(refused) == "42501"  # row-level security: new row refused
    else:
        assert changed == []  # no row the trader may update


async def test_a_position_belongs_to_its_clients_desk(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, spread: None
) -> None:
    with pytest.raises(DBAPIError) as refused:
        async with owner_engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE positions SET desk_id = (SELECT id FROM desks WHERE code = 'FI-EU')"
                    " WHERE client_id = (SELECT id FROM clients WHERE external_id = 'CUST-1001')"
                )
            )
    assert sqlstate_of(refused.value) == "23503"  # the (client, desk) foreign key


@pytest.mark.parametrize(
    "path",
    [
        "/clients/CUST%001001/portfolio",
        "/positions?client_id=a%00b",
        "/positions?symbol=a%00b",
        "/positions?desk=a%00b",
    ],
)
async def test_hostile_input_is_a_422_never_a_500(
    client: httpx.AsyncClient, cast: Cast, path: str
) -> None:
    response = await client.get(f"{API}{path}", headers=cast["admin"])
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
