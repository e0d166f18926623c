"""The hot requests, answered ahead of the framework's own layers.

A GET answered in one statement (db.http.answered_in_one_statement: an order, its history,
the list, a portfolio) and a new order, recorded in one statement too or else by its endpoint called
directly with its arguments (db.http.called_directly), still passed through FastAPI's
exception layer, routing and request handling, which cost about a quarter of such a read's
CPU in our stack (docs/benchmarks.md). The middleware here answers them before those
layers, with their route's own shortcut; FastAPI still owns the routes, documents them, and
answers every request not in the shape the shortcut serves (a malformed id, no credentials,
a body that does not validate).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tradeops.db.http import READ_METHODS, AnsweredAhead, TransactionalRoute
from tradeops.route_prefixes import Matches, routes_in_order


@dataclass(frozen=True, slots=True)
class HotPath:
    route: APIRoute  # what the request's scope names, as the framework's routing would
    matches: Matches  # the route where the app includes it
    answer: AnsweredAhead


class HotPaths:
    """Pure ASGI, the innermost of our middleware (so CORS and the request context wrap what
    it answers): a request its hot path answers is answered here, with the problem documents
    the app's exception handlers write for its errors; any other goes on to the app, a body
    already read given to it again. Only paths no earlier route of the app matches are hot
    (`tests/unit/test_hot_paths.py` checks the app's routes in order), so which route
    answers a request is unchanged."""

    def __init__(self, app: ASGIApp, paths: Iterable[HotPath]) -> None:
        self.app = app
        # By method, so that any other request tries as few paths as it can.
        self.paths: dict[str, tuple[HotPath, ...]] = {}
        for path in paths:
            for method in path.route.methods or ():
                self.paths[method] = (*self.paths.get(method, ()), path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for path in self.paths.get(scope["method"], ()):
                match, child_scope = path.matches(scope)
                if match is Match.FULL:  # its path, and one of its methods
                    # As the framework's routing: the scope names the route (our outer layer
                    # labels the metrics and the access line by it) and its path parameters.
                    scope.update(child_scope, route=path.route)
                    request = Request(scope, receive)
                    response = await _answered(path, request)
                    if response is not None:
                        await response(scope, receive, send)
                        return
                    if scope["method"] not in READ_METHODS:
                        receive = _again(await request.body(), receive)
                    break
        await self.app(scope, receive, send)


async def _answered(path: HotPath, request: Request) -> Response | None:
    try:
        if request.method not in READ_METHODS:
            await request.body()  # read here, so that the app can be given it again
        return await path.answer(request)
    except Exception as error:
        return await _handled(request, error)


def _again(body: bytes, receive: Receive) -> Receive:
    """`receive`, giving first the body already read, whole."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive_again() -> Message:
        return pending.pop() if pending else await receive()

    return receive_again


async def _handled(request: Request, error: Exception) -> Response:
    """The response the app's exception handler for `error` writes, as the framework's
    exception layer finds it (the nearest class it has one for)."""
    handlers = request.app.exception_handlers
    for cls in type(error).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            response = await handler(request, error)
            if isinstance(response, Response):
                return response
    raise error


def hot_paths(app: FastAPI) -> list[HotPath]:
    """The app's routes with a shortcut, each with how the app matches it."""
    return [
        HotPath(route, matches, route.answered_ahead)
        for route, matches in routes_in_order(app)
        if isinstance(route, TransactionalRoute) and route.answered_ahead is not None
    ]
