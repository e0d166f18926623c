"""`tradeops simulate-fills`: approved orders filled at the latest price (or the limit),
through the executions service, once."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import Cast, approved_order, make_instrument
from tradeops.auth.principal import SYSTEM
from tradeops.executions.simulation import fill_price, simulate_fills

API = "/api/v1"
NOW = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)


def test_fill_price_is_the_market_unless_the_limit_forbids_it() -> None:
    D = Decimal
    assert fill_price("BUY", D("192.55"), D(192)) == D(192)
    assert fill_price("BUY", D("192.55"), D(193)).startswith("not marketable")
    assert fill_price("SELL", D("192.55"), D(193)) == D(193)
    assert fill_price("SELL", D("192.55"), D(192)).startswith("not marketable")
    assert fill_price("BUY", None, D(192)) == D(192)
    assert fill_price("BUY", D("192.55"), None) == D("192.55")
    assert fill_price("SELL", None, None) == "no market price for a MARKET order"


async def test_simulation_fills_each_approved_order_once(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await make_instrument(owner_engine, "NVDA")
    snapshot = {"symbol": "AAPL", "price": "192", "as_of": "2026-11-23T16:00:00Z", "source": "t"}
    published = await client.post(
        f"{API}/market-data/snapshots", json={"snapshots": [snapshot]}, headers=cast["admin"]
    )
    assert published.status_code == 201
    at_market = await approved_order(client, cast, owner_engine)  # BUY 50 AAPL limit 192.55
    at_limit = await approved_order(client, cast, owner_engine, symbol="MSFT", price=400)
    below_market = await approved_order(client, cast, owner_engine, quantity=5, price=191)
    unpriced = await approved_order(
        client, cast, owner_engine, symbol="NVDA", side="SELL", price=None, order_type="MARKET"
    )
    partly = await approved_order(client, cast, owner_engine)
    first_fill = {
        "quantity": "20",
        "price": "192.5",
        "venue": "XNAS",
        "executed_at": "2026-11-23T15:00:00Z",
        "external_id": "XNAS-1",
    }
    assert (
        await client.post(
            f"{API}/orders/{partly}/executions", json=first_fill, headers=cast["admin"]
        )
    ).status_code == 201
    pending = await client.post(
        f"{API}/orders",
        json={
            "client_id": "CUST-1001",
            "symbol": "AAPL",
            "side": "BUY",
            "quantity": 1,
            "order_type": "MARKET",
        },
        headers=cast["trader"],
    )

    fills = {f.order_id: f for f in await simulate_fills(owner_engine, SYSTEM, clock=lambda: NOW)}

    assert set(fills) == {at_market, at_limit, below_market, unpriced, partly}
    assert (fills[at_market].price, fills[at_market].outcome) == (Decimal(192), "FILLED")
    assert (fills[at_limit].price, fills[at_limit].outcome) == (Decimal(400), "FILLED")
    assert (fills[partly].quantity, fills[partly].outcome) == (Decimal(30), "FILLED")
    assert fills[below_market].price is None
    assert fills[below_market].outcome.startswith("not marketable")
    assert fills[unpriced].outcome == "no market price for a MARKET order"
    order = (
        await client.get(f"{API}/orders/{pending.json()['id']}", headers=cast["trader"])
    ).json()
    assert order["status"] == "PENDING"

    executions = (
        await client.get(f"{API}/orders/{at_market}/executions", headers=cast["trader"])
    ).json()
    assert [(e["external_id"], e["venue"], e["quantity"], e["price"]) for e in executions] == [
        (f"SIM-{at_market}", "SIMULATOR", "50", "192")
    ]
    assert executions[0]["recorded_by"] == "system@tradeops"
    positions = await client.get(
        f"{API}/positions", params={"symbol": "AAPL"}, headers=cast["trader"]
    )
    assert positions.json()["items"][0]["quantity"] == "100"  # 50 + 20 + 30

    again = await simulate_fills(owner_engine, SYSTEM, clock=lambda: NOW)
    assert {f.order_id for f in again} == {below_market, unpriced}  # the rest are FILLED
    async with owner_engine.connect() as conn:
        count = await conn.scalar(text("SELECT count(*) FROM executions"))
    assert count == 4  # XNAS-1 and three simulated fills


async def test_simulate_fills_command_prints_what_it_did(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, database_url: str
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    env = {**os.environ, "TRADEOPS_DATABASE_URL": database_url, "TRADEOPS_ENV": "test"}
    done = subprocess.run(
        [sys.executable, "-m", "tradeops.cli", "simulate-fills"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if f" {order_id} " in line)
    assert "CUST-1001" in line and "192.55" in line and "FILLED" in line
    order = (await client.get(f"{API}/orders/{order_id}", headers=cast["trader"])).json()
    assert (order["status"], order["avg_fill_price"]) == ("FILLED", "192.55")
    rerun = subprocess.run(
        [sys.executable, "-m", "tradeops.cli", "simulate-fills"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert "no approved orders to fill" in rerun.stdout
