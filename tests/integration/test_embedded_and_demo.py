"""The embedded PostgreSQL boots from nothing; demo data loads and reloads without change."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tradeops.auth.principal import SYSTEM
from tradeops.db.uow import run_in_transaction
from tradeops.demo import load_demo_data

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
