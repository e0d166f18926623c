"""The unit of work's dependency reads the credentials without declaring them (deps.py says
why): every route that takes it must take the principal too, which declares them, so that
the route's OpenAPI operation lists its security schemes."""

from __future__ import annotations

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from tradeops import deps
from tradeops.app import create_app
from tradeops.settings import Settings


def _calls(dependant: Dependant) -> set[object]:
    found = {dependant.call}
    for dependency in dependant.dependencies:
        found |= _calls(dependency)
    return found


def _api_routes(routes: list[BaseRoute]) -> list[APIRoute]:
    """Every operation, in included routers too (FastAPI keeps them as routers)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif (router := getattr(route, "original_router", None)) is not None:
            found += _api_routes(router.routes)
    return found


def test_every_route_with_a_unit_of_work_declares_how_it_authenticates() -> None:
    settings = Settings(env="test", _env_file=None)  # type: ignore[call-arg]
    app = create_app(settings, "postgresql://nobody@127.0.0.1/none")
    routes = _api_routes(app.routes)
    with_uow = [route for route in routes if deps._uow in _calls(route.dependant)]
    assert with_uow, "no route takes a UoW: the check checks nothing"
    undeclared = [
        route.path for route in with_uow if deps._principal not in _calls(route.dependant)
    ]
    assert undeclared == []
