"""Server housekeeping (checkpoints, idempotency-key purge) and the browser-facing defaults."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import SEED_ORDER, Cast
from tradeops.app import create_app
from tradeops.maintenance import run_round
from tradeops.settings import Settings


async def test_housekeeping_signs_the_trail_and_forgets_old_idempotency_keys(
    app: FastAPI,
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    settings: Settings,
) -> None:
    for key in ("old", "fresh"):
        created = await client.post(
            "/api/v1/orders", json=SEED_ORDER, headers={**cast["trader"], "Idempotency-Key": key}
        )
        assert created.status_code == 201
    async with owner_engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'"
                " WHERE key = 'old'"
            )
        )
    await run_round(app.state.db, settings.model_copy(update={"audit_settle_seconds": 0}))
    async with owner_engine.connect() as conn:
        keys = set((await conn.execute(text("SELECT key FROM idempotency_keys"))).scalars())
        checkpoints = await conn.scalar(text("SELECT count(*) FROM audit_checkpoints"))
    assert keys == {"fresh"}
    assert checkpoints == 1
    report = await client.post("/api/v1/audit/verify", headers=cast["risk"])
    assert report.json()["ok"] is True and report.json()["checkpoints_checked"] == 1


async def preflight(app: FastAPI, origin: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        return await http.options(
            "/api/v1/orders",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )


async def test_cors_allows_no_origin_by_default(client: httpx.AsyncClient, app: FastAPI) -> None:
    response = await preflight(app, "https://evil.example")
    assert "access-control-allow-origin" not in response.headers


async def test_cors_allows_only_listed_origins(settings: Settings, database_url: str) -> None:
    listed = settings.model_copy(update={"cors_origins": ["https://desk.bank.example"]})
    app = create_app(listed, database_url)
    async with app.router.lifespan_context(app):
        allowed = await preflight(app, "https://desk.bank.example")
        other = await preflight(app, "https://evil.example")
    assert allowed.headers["access-control-allow-origin"] == "https://desk.bank.example"
    assert "access-control-allow-origin" not in other.headers
