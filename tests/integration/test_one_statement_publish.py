"""Issue 15, "a write needs at most two" round trips: POST /market-data/snapshots in one
statement (migration 0036), with every property of the transaction it replaced.

- The installed function runs the batch's statement and appends its audit event exactly as
  marketdata.repository writes them.
- A batch published in one statement stores and audits what one published in a transaction
  (marketdata.service.publish) does.
- Who may not publish writes nothing and is answered as before; the function itself
  refuses them; an unknown symbol stores nothing and names each snapshot.
- Nothing of the caller stays on the pooled connection.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import (
    Cast,
    bearer,
    caller_left_on_the_one_connection,
    installed_source,
    stored_api_key,
)
from tradeops.auth.keys import hash_key, parse_key
from tradeops.auth.permissions import Action, who_may_all
from tradeops.auth.principal import Principal, Role
from tradeops.db.uow import APP_ROLE, run_in_transaction
from tradeops.marketdata import repository as market_repo
from tradeops.marketdata import service as market_data
from tradeops.marketdata.schemas import SnapshotBatch

SNAPSHOTS = "/api/v1/market-data/snapshots"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def batch(source: str, count: int = 3) -> dict[str, Any]:
    """`count` AAPL prices from `source`, a second apart, and an MSFT quote."""
    at = [(T0 + timedelta(seconds=n)).isoformat() for n in range(count)]
    prices = [
        {"symbol": "AAPL", "price": f"192.{n:02d}", "as_of": a, "source": source}
        for n, a in enumerate(at)
    ]
    quote = {"symbol": "MSFT", "price": "415.10", "bid": "415.05", "ask": "415.15"}
    return {"snapshots": [*prices, {**quote, "as_of": at[0], "source": source}]}


async def audited(engine: AsyncEngine, source: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT stream, entity, entity_id, before, after, actor FROM audit_events"
                " WHERE action = 'market_data.published' AND entity_id = :source ORDER BY id"
            ),
            {"source": source},
        )
        return [dict(row) for row in found.mappings()]


async def stored(engine: AsyncEngine, source: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT i.symbol, s.price, s.bid, s.ask, s.as_of FROM market_snapshots s"
                " JOIN instruments i ON i.id = s.instrument_id WHERE s.source = :source"
                " ORDER BY i.symbol, s.as_of"
            ),
            {"source": source},
        )
        return [tuple(row) for row in found]


async def test_the_installed_function_publishes_as_the_code_writes_it(
    owner_engine: AsyncEngine,
) -> None:
    """The migration holds a copy of PUBLISH and of the audit event's INSERT: a change to
    either without a migration that installs the function again fails here."""
    source = await installed_source(owner_engine, "tradeops_publish_snapshots")
    publish = source.split("applies to both.\n", 1)[1].strip().split(";\n", 1)[0]
    audit = source.split("at_unknown IS NULL THEN\n", 1)[1].strip().split(";\n", 1)[0]
    assert (publish, audit) == market_repo.publish_function()


async def test_a_batch_in_one_statement_is_stored_and_audited_as_in_a_transaction(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    admin = Principal(user_id=cast.ids["admin"], email="admin@test.bank", role=Role.ADMIN)
    alone = await client.post(SNAPSHOTS, json=batch("feed-a"), headers=cast["admin"])
    assert alone.status_code == 201, alone.text
    in_transaction = await run_in_transaction(
        app.state.db,
        admin,
        lambda uow: market_data.publish(uow, admin, SnapshotBatch.model_validate(batch("feed-b"))),
    )
    assert (
        alone.json()
        == in_transaction.model_dump()
        == {
            "received": 4,
            "stored": 4,
            "duplicates": 0,
        }
    )
    assert await stored(owner_engine, "feed-a") == await stored(owner_engine, "feed-b")
    (one,), (other,) = await audited(owner_engine, "feed-a"), await audited(owner_engine, "feed-b")
    assert one["after"]["sources"] == ["feed-a"] and other["after"]["sources"] == ["feed-b"]
    for event in (one, other):
        event["after"].pop("sources")
        event.pop("stream"), event.pop("entity_id")
    assert one == other
    again = await client.post(SNAPSHOTS, json=batch("feed-a", count=5), headers=cast["admin"])
    assert again.json() == {"received": 6, "stored": 2, "duplicates": 4}
    (_, resent) = await audited(owner_engine, "feed-a")
    assert (resent["after"]["stored"], resent["after"]["duplicates"]) == (2, 4)


@pytest.mark.parametrize(
    ("who", "status"),
    [("trader", 403), ("key without marketdata:write", 403), ("nobody", 401)],
)
async def test_who_may_not_publish_writes_nothing(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, who: str, status: int
) -> None:
    headers = cast[who] if who in ("trader", "nobody") else {}
    if who == "key without marketdata:write":
        key = await stored_api_key(owner_engine, "admin@test.bank", ["marketdata:read"])
        headers = bearer(key)
    answer = await client.post(SNAPSHOTS, json=batch("feed-x"), headers=headers)
    assert answer.status_code == status, answer.text
    assert await stored(owner_engine, "feed-x") == []
    assert await audited(owner_engine, "feed-x") == []


async def publish_as_key(raw: Any, key: str, symbols: list[str]) -> Any:
    """A batch of one price per symbol, straight to the function, with who may as the
    application passes it."""
    rule = who_may_all(Action.PUBLISH_MARKET_DATA)
    return await raw.fetchrow(
        "SELECT (caller).user_id, snapshots_stored, unknown_positions"
        " FROM tradeops_publish_snapshots($1, $2, NULL, NULL, $3, 'req', $4, $5, 5000, $6,"
        " array_fill(1.5::numeric, ARRAY[cardinality($6::text[])]), NULL, NULL,"
        " array_fill(now(), ARRAY[cardinality($6::text[])]), array_fill('fn'::text,"
        " ARRAY[cardinality($6::text[])]), 'fn', '{\"received\": 2}')",
        parse_key(key),
        hash_key(key),
        APP_ROLE,
        rule["roles"],
        rule["scopes"],
        symbols,
    )


async def test_the_database_refuses_a_caller_who_may_not_publish(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    """The function itself: a key without the scope gets its caller back and nothing is
    written; with it, an unknown symbol stores nothing; then the batch and its event."""
    narrow = await stored_api_key(owner_engine, "admin@test.bank", ["marketdata:read"])
    wide = await stored_api_key(owner_engine, "admin@test.bank", ["marketdata:write"])
    async with owner_engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        refused = await publish_as_key(raw, narrow, ["AAPL"])
        assert refused["user_id"] == cast.ids["admin"]
        assert refused["snapshots_stored"] is None
        unknown = await publish_as_key(raw, wide, ["AAPL", "NOPE"])
        assert (unknown["snapshots_stored"], unknown["unknown_positions"]) == (0, [2])
        assert await stored(owner_engine, "fn") == []
        assert await audited(owner_engine, "fn") == []
        allowed = await publish_as_key(raw, wide, ["AAPL", "MSFT"])
        assert (allowed["snapshots_stored"], allowed["unknown_positions"]) == (2, None)
    (event,) = await audited(owner_engine, "fn")
    assert event["after"] == {"received": 2, "stored": 2, "duplicates": 0}


async def test_nothing_of_the_publisher_stays_on_the_pooled_connection(
    one_connection_app: tuple[FastAPI, httpx.AsyncClient], cast: Cast
) -> None:
    app, http = one_connection_app
    answer = await http.post(SNAPSHOTS, json=batch("feed-c"), headers=cast["admin"])
    assert answer.status_code == 201, answer.text
    await caller_left_on_the_one_connection(app)
