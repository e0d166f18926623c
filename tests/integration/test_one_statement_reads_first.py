"""Issue 15 item 2: the GETs answered in one statement are answered ahead of the framework's
exception layer, routing and request handling (one_statement_reads.py), with the answers,
problems, headers, metrics and CORS the app gives them through the framework; any request not
in the statement's shape still goes through the framework, as documented."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.middleware.exceptions import ExceptionMiddleware

from tests.factories import SEED_ORDER, Cast
from tradeops.app import create_app
from tradeops.settings import Settings

ORDERS = "/api/v1/orders"
ORIGIN = "https://desk.bank.example"


@pytest.fixture
def through_framework(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths of the requests that reached the framework's exception layer."""
    reached: list[str] = []
    call = ExceptionMiddleware.__call__

    async def counted(self: ExceptionMiddleware, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            reached.append(scope["path"])
        await call(self, scope, receive, send)

    monkeypatch.setattr(ExceptionMiddleware, "__call__", counted)
    yield reached


def requests_counted(app: FastAPI, route: str, status: int) -> float:
    labels = {"method": "GET", "route": route, "status": str(status)}
    value = app.state.metrics.registry.get_sample_value("tradeops_http_requests_total", labels)
    return value or 0.0


async def test_an_order_and_a_portfolio_are_answered_ahead_of_the_framework(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, through_framework: list[str]
) -> None:
    created = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    order = f"{ORDERS}/{created.json()['id']}"
    counted = requests_counted(app, "/api/v1/orders/{order_id}", 200)
    through_framework.clear()
    shown = await client.get(order, headers=cast["trader"] | {"X-Request-ID": "early-1"})
    portfolio = await client.get("/api/v1/clients/CUST-1001/portfolio", headers=cast["agent"])
    assert (shown.status_code, portfolio.status_code) == (200, 200), shown.text
    assert through_framework == []
    assert shown.json() == created.json()
    assert shown.headers["etag"] == created.headers["etag"]
    assert shown.headers["x-request-id"] == "early-1"
    assert shown.headers["cache-control"] == "no-store"
    assert shown.headers["x-content-type-options"] == "nosniff"
    # Labelled by its route template, as a request the framework routed.
    assert requests_counted(app, "/api/v1/orders/{order_id}", 200) == counted + 1


async def test_its_refusals_are_the_apps_problem_documents(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, through_framework: list[str]
) -> None:
    created = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    order = f"{ORDERS}/{created.json()['id']}"
    through_framework.clear()
    other_desk = await client.get(order, headers=cast["trader_fi"])
    unknown = await client.get(f"{ORDERS}/999999999", headers=cast["trader"])
    bad = {"Authorization": "Bearer tro_nothing_nothing"}
    bad_key = await client.get(order, headers=bad)
    assert through_framework == []
    listing = await client.get(ORDERS, headers=bad)  # the framework's answer, to compare
    for missing in (other_desk, unknown):
        assert missing.status_code == 404, missing.text
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["type"].endswith("/order-not-found")
        assert missing.json()["instance"] == missing.request.url.path
        assert missing.json()["request_id"] == missing.headers["x-request-id"]
    assert (bad_key.status_code, listing.status_code) == (401, 401)
    for header in ("www-authenticate", "content-type"):
        assert bad_key.headers[header] == listing.headers[header]
    shown, listed = bad_key.json(), listing.json()
    assert {k: shown[k] for k in ("type", "title", "detail")} == {
        k: listed[k] for k in ("type", "title", "detail")
    }


async def test_what_the_statement_does_not_serve_goes_through_the_framework(
    client: httpx.AsyncClient, cast: Cast, through_framework: list[str]
) -> None:
    malformed = await client.get(f"{ORDERS}/12x", headers=cast["trader"])
    anonymous = await client.get(f"{ORDERS}/1")
    head = await client.head(f"{ORDERS}/1", headers=cast["trader"])
    assert (malformed.status_code, anonymous.status_code) == (422, 401)
    assert malformed.json()["errors"][0]["field"] == "path.order_id"
    assert head.status_code in (404, 405)
    assert through_framework == [f"{ORDERS}/12x", f"{ORDERS}/1", f"{ORDERS}/1"]


async def test_cors_headers_reach_an_answer_given_ahead_of_the_framework(
    settings: Settings, database_url: str, cast: Cast
) -> None:
    app = create_app(settings.model_copy(update={"cors_origins": [ORIGIN]}), database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            created = await http.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
            shown = await http.get(
                f"{ORDERS}/{created.json()['id']}", headers=cast["trader"] | {"Origin": ORIGIN}
            )
            missing = await http.get(
                f"{ORDERS}/999999999", headers=cast["trader"] | {"Origin": ORIGIN}
            )
    assert (shown.status_code, missing.status_code) == (200, 404)
    for response in (shown, missing):
        assert response.headers["access-control-allow-origin"] == ORIGIN
