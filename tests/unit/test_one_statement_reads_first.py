"""The GETs answered in one statement ahead of the framework (one_statement_reads.py) are
answered only where the framework's routing would choose the same route: for every path such
a route serves, no route the app tries before it matches."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from starlette.routing import BaseRoute, Match

from tradeops.app import create_app
from tradeops.one_statement_reads import one_statement_reads
from tradeops.route_prefixes import routes_in_order
from tradeops.settings import Settings

# Per route answered early: values of its path parameter it answers (the order's read takes
# digits only, anything else goes to the framework; a client id is any path segment).
SERVED = {
    "/api/v1/orders/{order_id}": ("1", "42", "9223372036854775807"),
    "/api/v1/clients/{client_id}/portfolio": ("CUST-1001", "1", "events", "x.y", "a:b", "%20"),
}


@pytest.fixture(scope="module")
def app() -> FastAPI:
    settings = Settings(env="test", _env_file=None)  # type: ignore[call-arg]
    return create_app(settings, "postgresql://nobody@127.0.0.1/none")


def first_route_for(app: FastAPI, path: str) -> BaseRoute | None:
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": []}
    for route, matches in routes_in_order(app):
        if matches(scope)[0] is Match.FULL:
            return route
    return None


def test_the_reads_answered_early_are_the_order_and_the_portfolio(app: FastAPI) -> None:
    assert sorted(read.route.path for read in one_statement_reads(app)) == sorted(SERVED)


@pytest.mark.parametrize("template", sorted(SERVED))
def test_no_earlier_route_matches_a_path_a_read_answers(app: FastAPI, template: str) -> None:
    (read,) = [read for read in one_statement_reads(app) if read.route.path == template]
    name = template.split("{", 1)[1].split("}", 1)[0]
    for value in SERVED[template]:
        path = template.replace("{" + name + "}", value)
        assert first_route_for(app, path) is read.route, path
