"""The hot requests answered ahead of the framework (hot_paths.py) are answered only where
the framework's routing would choose the same route: for every request a hot path serves, no
route the app tries before it matches."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from starlette.routing import BaseRoute, Match

from tradeops.app import create_app
from tradeops.hot_paths import hot_paths
from tradeops.route_prefixes import routes_in_order
from tradeops.settings import Settings

# Per hot path: values of its path parameter it answers (the order's read takes digits only,
# anything else goes to the framework; a client id is any path segment).
SERVED = {
    ("GET", "/api/v1/orders"): ("",),
    ("GET", "/api/v1/orders:by_client_order_id"): ("",),
    ("GET", "/api/v1/orders/{order_id}"): ("1", "42", "9223372036854775807"),
    ("GET", "/api/v1/orders/{order_id}/events"): ("1", "42", "9223372036854775807"),
    ("GET", "/api/v1/clients/{client_id}/portfolio"): ("CUST-1001", "1", "x.y", "a:b", "%20"),
    ("GET", "/api/v1/market-data/{symbol}"): ("AAPL", "aapl", "BRK.B", "snapshots"),
    ("POST", "/api/v1/orders"): ("",),
}


@pytest.fixture(scope="module")
def app() -> FastAPI:
    settings = Settings(env="test", _env_file=None)  # type: ignore[call-arg]
    return create_app(settings, "postgresql://nobody@127.0.0.1/none")


def first_route_for(app: FastAPI, method: str, path: str) -> BaseRoute | None:
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    for route, matches in routes_in_order(app):
        if matches(scope)[0] is Match.FULL:
            return route
    return None


def test_the_hot_paths_are_the_trade_flows_reads_and_a_new_order(
    app: FastAPI,
) -> None:
    found = {(method, hot.route.path) for hot in hot_paths(app) for method in hot.route.methods}
    assert found == set(SERVED)


@pytest.mark.parametrize(("method", "template"), sorted(SERVED))
def test_no_earlier_route_matches_a_request_a_hot_path_answers(
    app: FastAPI, method: str, template: str
) -> None:
    (hot,) = [
        hot
        for hot in hot_paths(app)
        if hot.route.path == template and method in (hot.route.methods or ())
    ]
    name = template.split("{", 1)[1].split("}", 1)[0] if "{" in template else ""
    for value in SERVED[(method, template)]:
        path = template.replace("{" + name + "}", value) if name else template
        assert first_route_for(app, method, path) is hot.route, path
