"""Health, metrics, logs, retries and error rendering through the real HTTP stack."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import text

from tradeops.app import create_app
from tradeops.auth.keys import generate_key
from tradeops.db.http import TransactionalRoute
from tradeops.deps import LoginUoW
from tradeops.observability import configure_logging
from tradeops.settings import Settings


async def test_liveness_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["db"] == "reachable"
    db = await client.get("/api/v1/health-check/db")
    assert db.status_code == 200
    assert db.json() == {"status": "ok", "db": "reachable"}


async def test_readiness_fails_when_schema_is_behind(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    head = app.state.migration_head
    app.state.migration_head = "9999"
    try:
        response = await client.get("/health/ready")
    finally:
        app.state.migration_head = head
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert "Retry-After" in response.headers


async def test_unreachable_database_is_503(settings: Settings) -> None:
    app = create_app(settings, "postgresql://nobody@127.0.0.1:1/none")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            for path in ("/health/ready", "/api/v1/health-check/db"):
                response = await http.get(path)
                assert response.status_code == 503
                assert response.headers["content-type"] == "application/problem+json"
            orders = await http.get("/api/v1/orders/1")
            assert orders.status_code == 503
            assert "nobody" not in orders.text


async def test_exhausted_pool_is_503_and_shows_in_the_pool_gauge(
    settings: Settings, database_url: str
) -> None:
    """With every connection held, a request waits pool_timeout_seconds, then gets a 503 it
    may retry; the gauge counts the held connection as in use."""
    tiny = settings.model_copy(
        update={"pool_size": 1, "pool_max_overflow": 0, "pool_timeout_seconds": 0.2}
    )
    app = create_app(tiny, database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            async with app.state.db.acquire():
                # A key of the right shape (none stored): only the database can refuse it.
                key = generate_key()[0]
                busy = await http.get("/api/v1/orders/1", headers={"X-API-Key": key})
                gauge = (await http.get("/metrics")).text
            assert busy.status_code == 503
            assert busy.headers["Retry-After"] == "2"
            assert busy.json()["type"].endswith("/database-unavailable")
            assert 'tradeops_db_pool_connections{state="in_use"} 1.0' in gauge
            free = await http.get("/api/v1/health-check/db")
            assert free.status_code == 200
            assert (
                'tradeops_db_pool_connections{state="idle"} 1.0'
                in (await http.get("/metrics")).text
            )


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    await client.get("/api/v1/orders/12345")
    body = (await client.get("/metrics")).text
    assert 'route="/api/v1/orders/{order_id}"' in body
    assert "tradeops_http_request_duration_seconds_bucket" in body
    assert 'tradeops_db_pool_connections{state="in_use"}' in body
    assert 'tradeops_db_pool_connections{state="idle"}' in body


async def test_access_log_line_carries_request_id(
    settings: Settings, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logged = settings.model_copy(update={"access_log": True, "log_format": "json"})
    configure_logging(logged)
    app = create_app(logged, database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            await http.get("/api/v1/orders/7", headers={"X-Request-ID": "req-log-1"})
    logging.getLogger().handlers.clear()
    lines = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    access = [line for line in lines if line.get("event") == "request"]
    assert access, lines
    entry = access[-1]
    assert entry["request_id"] == "req-log-1"
    assert (entry["method"], entry["path"], entry["status"]) == ("GET", "/api/v1/orders/7", 401)
    assert entry["duration_ms"] >= 0


async def test_serialization_failures_are_retried_then_503(
    settings: Settings, database_url: str
) -> None:
    calls = {"n": 0}
    router = APIRouter(route_class=TransactionalRoute)

    @router.post("/conflict")
    async def always_conflicts(uow: LoginUoW) -> dict[str, int]:
        calls["n"] += 1
        await uow.execute(text("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40P01'; END $$"))
        return {}

    @router.post("/flaky")
    async def conflicts_once(uow: LoginUoW) -> dict[str, int]:
        calls["n"] += 1
        if calls["n"] == 1:
            await uow.execute(
                text("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END $$")
            )
        return {"attempts": calls["n"]}

    app = create_app(settings, database_url)
    app.include_router(router)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.post("/conflict")
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert calls["n"] == settings.db_retry_attempts
            calls["n"] = 0
            flaky = await http.post("/flaky")
            assert flaky.status_code == 200
            assert flaky.json() == {"attempts": 2}
