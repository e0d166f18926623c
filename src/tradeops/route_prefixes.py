"""Route matching that passes over an included router none of whose routes can match a path.

FastAPI 0.165 matches included routers at request time: a request tries each router the app
includes, in order, and each tries its routes, with bookkeeping in the scope around every
route it tries. GET /orders/{id} tried the sign-in, auth, audit, audit-verify and event-stream
routers (13 routes) before the orders router: route matching was about 14% of its profiled
time (bench/stack_cost.py).

Each route's pattern begins with the literal text of its path up to the first parameter, so
a path that starts with none of a router's literal prefixes matches none of its routes, not
even partly (another method): the router answers NONE, as trying each route would have. Only
such answers are short-cut: which route wins, for any path and method, is unchanged. A router
whose routes are not all plain path routes (a mount, a host, a router included in it) is
tried as before, and so is one whose routes change after this is set up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from fastapi import FastAPI
from fastapi.routing import (
    _FASTAPI_SCOPE_KEY,
    APIRoute,
    _EffectiveRouteContext,
    _IncludedRouter,
)
from starlette._utils import get_route_path
from starlette.routing import BaseRoute, Match, Route, WebSocketRoute
from starlette.types import Scope

Matches = Callable[[Scope], tuple[Match, Scope]]


def pass_over_routers_by_prefix(app: FastAPI) -> None:
    """For each router the app includes: a path outside its routes' prefixes is no match,
    without trying them."""
    for route in app.router.routes:
        if isinstance(route, _IncludedRouter):
            prefixes = literal_prefixes(route)
            if prefixes is not None:
                route.matches = _by_prefix(route, prefixes)  # type: ignore[method-assign,assignment]


def literal_prefixes(included: _IncludedRouter) -> tuple[str, ...] | None:
    """The literal start of each of the router's route patterns, or None when a route is not
    a plain path pattern (then the router is always tried)."""
    prefixes = []
    for candidate in included.effective_candidates():
        if not isinstance(candidate, _EffectiveRouteContext):
            return None  # a router included in this one
        if isinstance(candidate.original_route, APIRoute):
            path_format, pattern = candidate.path_format, candidate.path_regex
        elif isinstance(candidate.starlette_route, Route | WebSocketRoute):
            path_format = candidate.starlette_route.path_format
            pattern = candidate.starlette_route.path_regex
        else:
            return None
        prefix = path_format.split("{", 1)[0]
        # What a match requires, checked rather than assumed of the framework.
        if not isinstance(pattern, re.Pattern) or not pattern.pattern.startswith(
            "^" + re.escape(prefix)
        ):
            return None
        prefixes.append(prefix)
    # Those another does not start with: a path starts with one of them or with none.
    return tuple(
        sorted(p for p in set(prefixes) if not any(p.startswith(q) and p != q for q in prefixes))
    )


def _by_prefix(included: _IncludedRouter, prefixes: tuple[str, ...]) -> Matches:
    tried = included.matches
    router = included.original_router
    version = router._routes_version

    def matches(scope: Scope) -> tuple[Match, Scope]:
        if router._routes_version != version:
            return tried(scope)  # its routes changed since: try them
        if get_route_path(scope).startswith(prefixes):
            return tried(scope)
        scope.setdefault(_FASTAPI_SCOPE_KEY, {})  # as trying the router would
        return Match.NONE, {}

    return matches


def routes_in_order(app: FastAPI) -> Iterator[tuple[BaseRoute, Matches]]:
    """The app's routes in the order its routing tries them, each with how it matches a
    request where the app includes it (an included router's routes under its prefix)."""
    for route in app.router.routes:
        if isinstance(route, _IncludedRouter):
            for context in route.effective_route_contexts():
                yield context.original_route, context.matches
        else:
            yield route, route.matches
