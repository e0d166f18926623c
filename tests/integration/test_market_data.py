"""Market data over HTTP: bulk publishing in one statement, latest price, history pages,
validation, who may publish and read, and the database refusing what the API refuses."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import Cast, bearer, make_api_key, make_instrument, stored_api_key
from tests.owner import driver_of
from tradeops.auth.principal import Principal, Role
from tradeops.db.uow import UnitOfWork

MARKET_DATA = "/api/v1/market-data"
SNAPSHOTS = f"{MARKET_DATA}/snapshots"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def snapshot(**changes: Any) -> dict[str, Any]:
    body = {
        "symbol": "AAPL",
        "price": "192.55",
        "bid": "192.54",
        "ask": "192.56",
        "as_of": "2026-11-23T10:00:00Z",
        "source": "bloomberg",
        **changes,
    }
    return {k: v for k, v in body.items() if v is not ...}


def at(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def series(count: int, symbol: str = "AAPL", source: str = "bloomberg") -> list[dict[str, Any]]:
    """`count` prices one second apart from T0, rising a cent each."""
    return [
        snapshot(
            symbol=symbol,
            price=str(Decimal("100.00") + Decimal("0.01") * i),
            bid=None,
            ask=None,
            as_of=at(i),
            source=source,
        )
        for i in range(count)
    ]


async def publish(
    client: httpx.AsyncClient, headers: dict[str, str], items: list[dict[str, Any]]
) -> httpx.Response:
    return await client.post(SNAPSHOTS, json={"snapshots": items}, headers=headers)


async def count_rows(engine: AsyncEngine, table: str = "market_snapshots") -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")))


# --- publishing ------------------------------------------------------------------------------


async def test_bulk_upload_of_1000_prices_is_one_request_and_idempotent_on_resend(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    items = series(500, "AAPL") + series(500, "MSFT")
    first = await publish(client, cast["admin"], items)
    assert first.status_code == 201, first.text
    assert first.json() == {"received": 1000, "stored": 1000, "duplicates": 0}
    again = await publish(client, cast["admin"], items)
    assert again.status_code == 201, again.text
    assert again.json() == {"received": 1000, "stored": 0, "duplicates": 1000}
    assert await count_rows(owner_engine) == 1000


async def test_a_snapshot_repeated_within_one_batch_is_stored_once(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    response = await publish(client, cast["admin"], [snapshot(), snapshot(price="1")])
    assert response.status_code == 201, response.text
    assert response.json() == {"received": 2, "stored": 1, "duplicates": 1}


async def test_overlapping_batches_published_at_once_store_each_snapshot_once(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """Same snapshots in opposite orders, concurrently: one stores each, neither fails."""
    aapl, msft = series(300, "AAPL"), series(300, "MSFT")
    batches = [aapl + msft, msft[::-1] + aapl[::-1]] * 2
    responses = await asyncio.gather(*(publish(client, cast["admin"], b) for b in batches))
    assert [r.status_code for r in responses] == [201] * 4, [r.text for r in responses]
    assert sum(r.json()["stored"] for r in responses) == 600
    assert await count_rows(owner_engine) == 600


async def test_same_moment_from_another_source_is_another_snapshot(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    response = await publish(client, cast["admin"], [snapshot(), snapshot(source="reuters")])
    assert response.json() == {"received": 2, "stored": 2, "duplicates": 0}


async def test_publishing_records_one_audit_event_for_the_batch(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    response = await publish(client, cast["admin"], [*series(3), snapshot(as_of=at(-60))])
    assert response.status_code == 201, response.text
    async with owner_engine.connect() as conn:
        events = (
            await conn.execute(
                text("SELECT actor, entity_id, after FROM audit_events WHERE action = :a"),
                {"a": "market_data.published"},
            )
        ).all()
    assert len(events) == 1
    event = events[0]
    assert (event.actor, event.entity_id) == (f"user:{cast.ids['admin']}", "bloomberg")
    assert event.after["received"] == event.after["stored"] == 4
    assert event.after["duplicates"] == 0
    assert event.after["sources"] == ["bloomberg"]
    assert datetime.fromisoformat(event.after["as_of_from"]) == T0 - timedelta(seconds=60)
    assert datetime.fromisoformat(event.after["as_of_to"]) == T0 + timedelta(seconds=2)


async def test_a_resend_that_stores_nothing_records_no_audit_event(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    for _ in range(2):
        assert (await publish(client, cast["admin"], series(5))).status_code == 201
    async with owner_engine.connect() as conn:
        events = await conn.scalar(
            text("SELECT count(*) FROM audit_events WHERE action = 'market_data.published'")
        )
    assert events == 1


async def test_unknown_symbols_fail_the_whole_batch_naming_each_index(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    items = [*series(3), snapshot(symbol="NOPE"), snapshot(symbol="zzz", as_of=at(9))]
    response = await publish(client, cast["admin"], items)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert [e["field"] for e in problem["errors"]] == [
        "body.snapshots.3.symbol",
        "body.snapshots.4.symbol",
    ]
    assert "NOPE, ZZZ" in problem["detail"]
    assert await count_rows(owner_engine) == 0


def _error_fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return [e["field"] for e in response.json()["errors"]]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"price": "abc"}, "body.snapshots.1.price"),
        ({"price": "NaN"}, "body.snapshots.1.price"),
        ({"price": "Infinity"}, "body.snapshots.1.price"),
        ({"price": "0"}, "body.snapshots.1.price"),
        ({"price": "-1.5"}, "body.snapshots.1.price"),
        ({"price": "1.1234567"}, "body.snapshots.1.price"),
        ({"price": "123456789012345"}, "body.snapshots.1.price"),
        ({"price": ...}, "body.snapshots.1.price"),
        ({"bid": "0"}, "body.snapshots.1.bid"),
        ({"bid": "192.57", "ask": "192.56"}, "body.snapshots.1.ask"),
        ({"as_of": "2026-11-23T10:00:00"}, "body.snapshots.1.as_of"),
        ({"as_of": "yesterday"}, "body.snapshots.1.as_of"),
        ({"source": ""}, "body.snapshots.1.source"),
        ({"source": "x" * 65}, "body.snapshots.1.source"),
        ({"symbol": "A A"}, "body.snapshots.1.symbol"),
        ({"volume": 10}, "body.snapshots.1.volume"),
    ],
    ids=lambda value: str(value)[:40],
)
async def test_invalid_snapshot_is_422_naming_its_field(
    client: httpx.AsyncClient, cast: Cast, changes: dict[str, Any], field: str
) -> None:
    response = await publish(client, cast["admin"], [snapshot(), snapshot(**changes)])
    assert _error_fields(response) == [field]


async def test_numbers_are_accepted_and_come_back_as_strings(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    response = await publish(client, cast["admin"], [snapshot(price=192.55, bid=192.5, ask=193)])
    assert response.status_code == 201, response.text
    latest = await client.get(f"{MARKET_DATA}/AAPL", headers=cast["trader"])
    assert latest.json()["price"] == "192.55"
    assert (latest.json()["bid"], latest.json()["ask"]) == ("192.5", "193")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"snapshots": []}, "body.snapshots"),
        ({}, "body.snapshots"),
        ({"snapshots": [snapshot()], "extra": 1}, "body.extra"),
    ],
)
async def test_batch_must_hold_one_to_5000_snapshots(
    client: httpx.AsyncClient, cast: Cast, body: dict[str, Any], field: str
) -> None:
    response = await client.post(SNAPSHOTS, json=body, headers=cast["admin"])
    assert _error_fields(response) == [field]


async def test_more_than_5000_snapshots_is_422(client: httpx.AsyncClient, cast: Cast) -> None:
    items = [{"symbol": "AAPL", "price": 1, "as_of": at(i), "source": "s"} for i in range(5001)]
    response = await publish(client, cast["admin"], items)
    assert _error_fields(response) == ["body.snapshots"]


async def test_body_beyond_the_bulk_limit_is_413(
    client: httpx.AsyncClient, cast: Cast, app: Any
) -> None:
    limit = app.state.settings.max_bulk_body_bytes
    response = await client.post(
        SNAPSHOTS,
        content=b'{"snapshots": [' + b" " * limit + b"]}",
        headers={**cast["admin"], "Content-Type": "application/json"},
    )
    assert response.status_code == 413


# --- reading ---------------------------------------------------------------------------------


async def test_latest_is_the_newest_as_of_whatever_the_order_of_arrival(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    newest = snapshot(price="195.00", bid=..., ask=..., as_of=at(60), source="reuters")
    older = [snapshot(price="190.00", as_of=at(0)), snapshot(price="191.00", as_of=at(30))]
    assert (await publish(client, cast["admin"], [newest])).status_code == 201
    assert (await publish(client, cast["admin"], older)).status_code == 201
    response = await client.get(f"{MARKET_DATA}/aapl", headers=cast["trader"])
    assert response.status_code == 200, response.text
    assert response.json() == {
        "symbol": "AAPL",
        "price": "195",
        "bid": None,
        "ask": None,
        "as_of": "2026-11-23T10:01:00Z",
        "source": "reuters",
    }


async def test_latest_of_unknown_symbol_or_of_one_without_prices_is_404(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    for symbol in ("NOPE", "MSFT"):
        response = await client.get(f"{MARKET_DATA}/{symbol}", headers=cast["trader"])
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("/market-data-not-found")


async def test_history_in_range_newest_first_in_pages(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    # 10 prices a second apart, and at T0+5 a second source's price too: 11 snapshots.
    items = [*series(10), snapshot(price="1", as_of=at(5), source="reuters"), *series(3, "MSFT")]
    assert (await publish(client, cast["admin"], items)).status_code == 201
    params = {"from": at(2), "to": at(8), "limit": 3}
    seen: list[tuple[str, str]] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {**params, **({"after": cursor} if cursor else {})}
        response = await client.get(
            f"{MARKET_DATA}/AAPL/history", params=query, headers=cast["agent"]
        )
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 3
        seen += [(s["as_of"], s["source"]) for s in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # [T0+2, T0+8): seconds 7..2, with two snapshots at second 5.
    assert [a for a, _ in seen] == [at(s) for s in (7, 6, 5, 5, 4, 3, 2)]
    assert {src for a, src in seen if a == at(5)} == {"bloomberg", "reuters"}
    assert pages == 3


async def test_history_without_range_is_everything_and_the_default_page_size(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    assert (await publish(client, cast["admin"], series(60))).status_code == 201
    page = (await client.get(f"{MARKET_DATA}/AAPL/history", headers=cast["trader"])).json()
    assert len(page["items"]) == 50
    assert page["items"][0]["as_of"] == at(59)
    assert page["next_cursor"] is not None
    rest = await client.get(
        f"{MARKET_DATA}/AAPL/history",
        params={"after": page["next_cursor"]},
        headers=cast["trader"],
    )
    assert [s["as_of"] for s in rest.json()["items"]] == [at(s) for s in range(9, -1, -1)]
    assert rest.json()["next_cursor"] is None


async def test_history_of_a_symbol_without_prices_is_empty_and_of_an_unknown_one_404(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    empty = await client.get(f"{MARKET_DATA}/MSFT/history", headers=cast["trader"])
    assert empty.json() == {"items": [], "next_cursor": None}
    unknown = await client.get(f"{MARKET_DATA}/NOPE/history", headers=cast["trader"])
    assert unknown.status_code == 404


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"after": "garbage"}, "query.after"),
        ({"after": "1.99999999999999999999"}, "query.after"),
        ({"after": "9999999999999999999.1"}, "query.after"),
        ({"from": "2026-11-23T10:00:00"}, "query.from"),
        ({"limit": 0}, "query.limit"),
        ({"limit": 501}, "query.limit"),
    ],
)
async def test_history_with_invalid_parameters_is_422(
    client: httpx.AsyncClient, cast: Cast, params: dict[str, Any], field: str
) -> None:
    response = await client.get(
        f"{MARKET_DATA}/AAPL/history", params=params, headers=cast["trader"]
    )
    assert _error_fields(response) == [field]


# --- who may publish and read ----------------------------------------------------------------


@pytest.mark.parametrize("who", ["trader", "approver", "risk", "agent"])
async def test_only_admins_publish(client: httpx.AsyncClient, cast: Cast, who: str) -> None:
    response = await publish(client, cast[who], [snapshot()])
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_no_credentials_is_401(client: httpx.AsyncClient, cast: Cast) -> None:
    for response in (
        await publish(client, {}, [snapshot()]),
        await client.get(f"{MARKET_DATA}/AAPL"),
        await client.get(f"{MARKET_DATA}/AAPL/history"),
    ):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_an_admins_key_publishes_with_the_write_scope_only(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    _, feed = await make_api_key(owner_engine, "admin@test.bank", ["marketdata:write"])
    _, other = await make_api_key(owner_engine, "admin@test.bank", ["orders:read"])
    traders = await stored_api_key(owner_engine, "trader@test.bank", ["marketdata:write"])
    assert (await publish(client, bearer(feed), [snapshot()])).status_code == 201
    assert (await publish(client, bearer(other), [snapshot()])).status_code == 403
    assert (await publish(client, bearer(traders), [snapshot()])).status_code == 403


async def test_any_key_reads_prices(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    assert (await publish(client, cast["admin"], [snapshot()])).status_code == 201
    _, key = await make_api_key(owner_engine, "trader@test.bank", ["orders:read"])
    for path in ("/AAPL", "/AAPL/history"):
        assert (await client.get(f"{MARKET_DATA}{path}", headers=bearer(key))).status_code == 200


async def test_the_market_data_scopes_are_known_to_key_creation(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    body = {"name": "feed", "scopes": ["marketdata:read", "marketdata:write"]}
    response = await client.post("/api/v1/api-keys", json=body, headers=cast["admin"])
    assert response.status_code == 201, response.text


async def test_row_level_security_lets_only_admin_and_system_insert(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    """Even a query past the permission check cannot publish as a trader."""
    await make_instrument(owner_engine, "NVDA")
    insert = text(
        "INSERT INTO market_snapshots (instrument_id, price, as_of, source)"
        " SELECT id, 1, now(), 'sql' FROM instruments WHERE symbol = 'NVDA'"
    )
    people = [("trader", Role.TRADER, False), ("admin", Role.ADMIN, True)]
    for who, role, allowed in people:
        async with owner_engine.connect() as conn, conn.begin() as tx:
            await conn.execute(text("SELECT 1"))
            principal = Principal(cast.ids[who], f"{who}@test.bank", role, all_desks=True)
            await UnitOfWork(await driver_of(conn)).set_context(principal, "md-test")
            if allowed:
                await conn.execute(insert)
                assert await conn.scalar(text("SELECT count(*) FROM market_snapshots")) == 1
            else:
                with pytest.raises(DBAPIError, match="row-level security"):
                    await conn.execute(insert)
            await tx.rollback()


async def test_database_refuses_bid_above_ask(cast: Cast, owner_engine: AsyncEngine) -> None:
    with pytest.raises(DBAPIError, match="ck_market_snapshots_bid_not_above_ask"):
        async with owner_engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO market_snapshots (instrument_id, price, bid, ask, as_of, source)"
                    " SELECT id, 1, 2, 1, now(), 'sql' FROM instruments WHERE symbol = 'AAPL'"
                )
            )
