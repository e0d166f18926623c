"""GETs answered in one statement, ahead of the framework's own layers.

The routes that answer a GET in one statement (db.http.answered_in_one_statement: the order,
the portfolio) do so inside FastAPI's exception layer, routing and request handling, which
cost about a quarter of such a read's CPU in our stack (docs/benchmarks.md). The middleware
here answers those requests before them, with the route's own answer; FastAPI still owns the
routes, documents them and answers every other request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from tradeops.db.http import READ_METHODS, OneStatement, TransactionalRoute, read_where_fit
from tradeops.route_prefixes import routes_in_order


@dataclass(frozen=True, slots=True)
class _OneStatementRead:
    route: APIRoute  # what the request's scope names, as the framework's routing would
    matches: Callable[[Scope], tuple[Match, Scope]]  # the route where the app includes it
    answer: OneStatement


class OneStatementReads:
    """The GETs a TransactionalRoute answers in one statement (`answered_in_one_statement`),
    answered here, the innermost of our middleware, ahead of the framework's exception layer,
    routing and request handling: about a quarter of such a read's CPU in our stack
    (docs/benchmarks.md). Any other request, and one not in the shape the statement serves
    (a malformed id, no credentials), goes on to the app, which answers it as documented.

    The answer is the route's own (on the read replica when one may serve it), its errors the
    problem documents the app's exception handlers write. Only the paths that no earlier route
    of the app matches are answered here (`tests/unit/test_one_statement_reads_first.py`
    checks the routes in the app's order), so which route answers a path is unchanged."""

    def __init__(self, app: ASGIApp, reads: Iterable[_OneStatementRead]) -> None:
        self.app = app
        self.reads = tuple(reads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            for read in self.reads:
                match, child_scope = read.matches(scope)
                if match is Match.FULL:
                    # As the framework's routing: the scope names the route (our outer layer
                    # labels the metrics and the access line by it) and its path parameters.
                    scope.update(child_scope, route=read.route)
                    response = await _answered(read, Request(scope, receive))
                    if response is not None:
                        await response(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)


async def _answered(read: _OneStatementRead, request: Request) -> Response | None:
    try:
        return await read_where_fit(request, lambda db: read.answer(db, request))
    except Exception as error:
        return await _handled(request, error)


async def _handled(request: Request, error: Exception) -> Response:
    """The response the app's exception handler for `error` writes, as the framework's
    exception layer would find it (the nearest class it has one for)."""
    handlers = request.app.exception_handlers
    for cls in type(error).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            response = await handler(request, error)
            if isinstance(response, Response):
                return response
    raise error


def one_statement_reads(app: FastAPI) -> list[_OneStatementRead]:
    """The app's GET routes answered in one statement, each with how the app matches it."""
    reads = []
    for route, matches in routes_in_order(app):
        answer = getattr(route, "endpoint", None)
        answer = getattr(answer, "answered_in_one_statement", None)
        methods = getattr(route, "methods", None) or set()
        if isinstance(route, TransactionalRoute) and answer is not None and methods <= READ_METHODS:
            reads.append(_OneStatementRead(route, matches, answer))
    return reads
