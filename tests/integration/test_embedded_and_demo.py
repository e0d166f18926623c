"""The embedded PostgreSQL boots from nothing; demo data loads and reloads without change."""

from __future__ import annotations

import subprocess
import sys
from datetime import time as time_of
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import PASSWORD, bearer, pass_risk_check
from tradeops.auth.principal import SYSTEM
from tradeops.db.uow import run_in_transaction
from tradeops.demo import load_demo_data, load_demo_users

API = "/api/v1"

BOOT = """
import sys
from tradeops.db import migrate
from tradeops.db.embedded import resolve_database_url
url = resolve_database_url(None, __import__("pathlib").Path(sys.argv[1]))
migrate.upgrade(url)
print(url)
"""


@pytest.mark.slow
def test_embedded_server_boots_in_empty_directory_and_stops_on_exit(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = subprocess.run(
        [sys.executable, "-c", BOOT, str(home / "pgdata")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip().splitlines()[-1]
    assert (home / "pgdata" / "PG_VERSION").exists(), "data kept under TRADEOPS_HOME/pgdata"
    # The process that started it has exited, so the server must be down.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)

    again = subprocess.run(
        [
            sys.executable,
            "-c",
            BOOT + "\nimport psycopg\n"
            "print(psycopg.connect(url).execute('SELECT count(*) FROM users').fetchone()[0])",
            str(home / "pgdata"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == "1", "kept across runs: the system user"


async def test_demo_data_is_idempotent(owner_engine: AsyncEngine) -> None:
    first = await run_in_transaction(owner_engine, SYSTEM, lambda uow: load_demo_data(uow, SYSTEM))
    assert first == {
        "desks": 2,
        "clients": 3,
        "instruments": 7,
        "prices": 7,
        "risk_limits": 2,
        "approval_policies": 1,
    }
    second = await run_in_transaction(owner_engine, SYSTEM, lambda uow: load_demo_data(uow, SYSTEM))
    assert second == {
        "desks": 0,
        "clients": 0,
        "instruments": 0,
        "prices": 0,
        "risk_limits": 0,
        "approval_policies": 0,
    }
    async with owner_engine.connect() as conn:
        restricted = await conn.scalar(text("SELECT count(*) FROM instruments WHERE restricted"))
        symbols = set((await conn.execute(text("SELECT symbol FROM instruments"))).scalars())
        clients = dict(
            (
                await conn.execute(
                    text(
                        "SELECT c.external_id, d.code FROM clients c JOIN desks d ON d.id = desk_id"
                    )
                )
            ).all()
        )
        prices = dict(
            (
                await conn.execute(
                    text(
                        "SELECT i.symbol, s.price FROM market_snapshots s"
                        " JOIN instruments i ON i.id = s.instrument_id"
                    )
                )
            ).all()
        )
        published = await conn.scalar(
            text("SELECT count(*) FROM audit_events WHERE action = 'market_data.published'")
        )
    assert restricted >= 1
    assert set(prices) == symbols and len(prices) == 7
    assert (prices["AAPL"], prices["DBR-2034"]) == (Decimal("192.55"), Decimal("101.25"))
    assert published == 1, "reloading publishes nothing new, so nothing to audit"
    assert {"AAPL", "MSFT", "NVDA", "JPM", "SPY"} <= symbols
    assert clients == {"CUST-1001": "EQ-US", "CUST-1002": "EQ-US", "CUST-2001": "FI-EU"}


async def token_of(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    response = await client.post(
        f"{API}/auth/token", data={"username": email, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return bearer(response.json()["access_token"])


async def test_demo_desks_close_at_their_cut_offs_and_big_eq_us_orders_need_both_approvers(
    owner_engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    """What the README's demo relies on: EQ-US ends its day at 16:00 New York time and FI-EU
    at 17:30 Berlin time; EQ-US orders from 1,000,000 USD need two approvals, and
    approver2@demo.test is the second approver of EQ-US and can give one."""
    await run_in_transaction(owner_engine, SYSTEM, lambda uow: load_demo_data(uow, SYSTEM))
    await run_in_transaction(
        owner_engine, SYSTEM, lambda uow: load_demo_users(uow, SYSTEM, PASSWORD)
    )
    async with owner_engine.connect() as conn:
        cut_offs = (
            await conn.execute(text("SELECT code, time_zone, day_cutoff FROM desks ORDER BY code"))
        ).all()
        bands = (
            await conn.execute(
                text(
                    "SELECT d.code, p.currency, b.min_notional, b.approvals"
                    " FROM desk_approval_policies p JOIN desks d ON d.id = p.desk_id"
                    " JOIN approval_bands b ON b.desk_id = p.desk_id ORDER BY b.min_notional"
                )
            )
        ).all()
        approver2 = (
            await conn.execute(
                text(
                    "SELECT u.role, array_agg(d.code) FROM users u"
                    " JOIN desk_members m ON m.user_id = u.id JOIN desks d ON d.id = m.desk_id"
                    " WHERE u.email = 'approver2@demo.test' AND u.active GROUP BY u.role"
                )
            )
        ).one()
    assert [tuple(desk) for desk in cut_offs] == [
        ("EQ-US", "America/New_York", time_of(16)),
        ("FI-EU", "Europe/Berlin", time_of(17, 30)),
    ]
    assert [tuple(band) for band in bands] == [
        ("EQ-US", "USD", Decimal(0), 1),
        ("EQ-US", "USD", Decimal(1_000_000), 2),
    ]
    assert tuple(approver2) == ("approver", ["EQ-US"])

    trader = await token_of(client, "trader@demo.test")
    order = {"client_id": "CUST-1001", "symbol": "AAPL", "side": "BUY", "price": "192.55"}
    small = await client.post(f"{API}/orders", json={**order, "quantity": "5000"}, headers=trader)
    big = await client.post(f"{API}/orders", json={**order, "quantity": "5200"}, headers=trader)
    assert small.status_code == big.status_code == 201, (small.text, big.text)
    assert small.json()["approvals_required"] == 1  # 962,750 USD
    assert big.json()["approvals_required"] == 2  # 1,001,260 USD
    order_id = big.json()["id"]
    await pass_risk_check(owner_engine, order_id)
    reviewed = await client.post(f"{API}/orders/{order_id}/review", json={}, headers=trader)
    assert reviewed.status_code == 200, reviewed.text
    first = await client.post(
        f"{API}/orders/{order_id}/approve",
        json={},
        headers=await token_of(client, "approver@demo.test"),
    )
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "REVIEWED"
    second = await client.post(
        f"{API}/orders/{order_id}/approve",
        json={},
        headers=await token_of(client, "approver2@demo.test"),
    )
    assert second.status_code == 200, second.text
    assert second.json()["status"] == "APPROVED"
    assert [a["approved_by"] for a in second.json()["approvals"]] == [
        "approver@demo.test",
        "approver2@demo.test",
    ]
