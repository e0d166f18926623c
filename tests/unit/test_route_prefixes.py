"""Passing over an included router by its routes' prefixes (route_prefixes.py) changes no
router's answer, for any of the app's paths, odd paths around them, or any method."""

from __future__ import annotations

import re

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import _IncludedRouter
from starlette.routing import Match

from tradeops.app import create_app
from tradeops.route_prefixes import pass_over_routers_by_prefix
from tradeops.settings import Settings

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
ODD_PATHS = (
    "/",
    "",
    "/nope",
    "/api",
    "/api/v1",
    "/api/v1/",
    "/api/v1/orders/",
    "/api/v1/orders/1/",
    "/api/v1/ordersX",
    "/API/v1/orders",
    "/api/v1/orders:by_client_order_id",
    "/api/v1/orders/events/stream",
    "/api/v1/orders/events",
    "/api/v1/orders/1/executions/2/bust",
    "/api/v1/clients/c/portfolio",
    "/ui/static/app.css",
    "/ui/",
    "/mcp",
    "/mcp/",
    "/metrics",
    "/health/live/",
)


@pytest.fixture(scope="module")
def app() -> FastAPI:
    settings = Settings(env="test", _env_file=None)  # type: ignore[call-arg]
    return create_app(settings, "postgresql://nobody@127.0.0.1/none")


def included_routers(app: FastAPI) -> list[_IncludedRouter]:
    return [route for route in app.router.routes if isinstance(route, _IncludedRouter)]


def sample_paths(app: FastAPI) -> list[str]:
    """Each route's path with its parameters filled in several ways, and the odd paths."""
    templates = {
        context.path_format
        for router in included_routers(app)
        for context in router.effective_route_contexts()
    }
    paths = set(ODD_PATHS)
    for template in templates:
        for value in ("1", "x", "events", "by_client_order_id", "1/review"):
            paths.add(re.sub(r"\{[^}]*\}", value, template))
            paths.add(re.sub(r"\{[^}]*\}", value, template) + "/")
    return sorted(paths)


def test_every_included_router_is_passed_over_by_prefix(app: FastAPI) -> None:
    routers = included_routers(app)
    assert routers
    assert all("matches" in vars(router) for router in routers)


def test_no_router_answers_otherwise(app: FastAPI) -> None:
    compared = 0
    for router in included_routers(app):
        by_prefix = router.matches
        tried = _IncludedRouter.matches.__get__(router)
        for path in sample_paths(app):
            for kind, method in [("websocket", "GET")] + [("http", m) for m in METHODS]:
                scope = {"type": kind, "method": method, "path": path, "root_path": ""}
                expected, _ = tried(dict(scope))
                answered, _ = by_prefix(dict(scope))
                assert answered == expected, (path, method, kind)
                compared += expected != Match.NONE
    assert compared > 100  # the sample reaches the routes, not only their absence


def test_a_router_whose_routes_change_afterwards_is_tried_again() -> None:
    app = FastAPI()
    router = APIRouter()

    @router.get("/a/one")
    async def one() -> None: ...

    app.include_router(router)
    pass_over_routers_by_prefix(app)
    (included,) = included_routers(app)
    scope = {"type": "http", "method": "GET", "path": "/b/two", "root_path": ""}
    assert included.matches(dict(scope))[0] == Match.NONE

    @router.get("/b/two")
    async def two() -> None: ...

    assert included.matches(dict(scope))[0] == Match.FULL
