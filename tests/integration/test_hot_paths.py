"""Issue 15 item 2: the hot requests (an order or a portfolio read in one statement, a new
order) are answered ahead of the framework's exception layer, routing and request handling
(hot_paths.py), with the answers, problems, headers, metrics and CORS the app gives them
through the framework; any request not in the shortcut's shape still goes through the
framework, as documented, a body already read given to it whole."""

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


async def test_a_new_order_is_made_ahead_of_the_framework(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, through_framework: list[str]
) -> None:
    created = await client.post(ORDERS, json=SEED_ORDER, headers=cast["agent"])
    again = await client.post(
        ORDERS, json=SEED_ORDER, headers=cast["trader"] | {"Idempotency-Key": "hot-1"}
    )
    replayed = await client.post(
        ORDERS, json=SEED_ORDER, headers=cast["trader"] | {"Idempotency-Key": "hot-1"}
    )
    assert (created.status_code, again.status_code, replayed.status_code) == (201, 201, 201)
    assert through_framework == []
    assert created.headers["location"] == f"{ORDERS}/{created.json()['id']}"
    assert created.headers["etag"] == f'"{created.json()["version"]}"'
    assert replayed.json() == again.json()
    assert replayed.headers["idempotent-replayed"] == "true"
    labels = {"method": "POST", "route": ORDERS, "status": "201"}
    registry = app.state.metrics.registry
    assert registry.get_sample_value("tradeops_http_requests_total", labels) >= 3
    # A role that may not submit: the service's 403, as the app writes it.
    refused = await client.post(ORDERS, json=SEED_ORDER, headers=cast["risk"])
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert through_framework == []


async def test_a_body_that_does_not_validate_reaches_the_framework_whole(
    client: httpx.AsyncClient, cast: Cast, through_framework: list[str]
) -> None:
    """What FastAPI answers for a body it validates itself, word for word: its 422 lists
    each field, so it must have read the very body the hot path read first."""
    missing = {k: v for k, v in SEED_ORDER.items() if k not in ("symbol", "quantity")}
    invalid = await client.post(ORDERS, json=missing, headers=cast["trader"])
    not_json = await client.post(
        ORDERS, content=b"{not json", headers=cast["trader"] | {"Content-Type": "application/json"}
    )
    assert invalid.status_code == 422, invalid.text
    fields = sorted(error["field"] for error in invalid.json()["errors"])
    assert fields == ["body.quantity", "body.symbol"]
    assert not_json.status_code in (400, 422), not_json.text
    assert through_framework == [ORDERS, ORDERS]


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
