"""HTTP side of the unit of work: one transaction per request, committed before the response.

A route class rather than a dependency with `yield`, because the commit must finish (and may
fail) before the client is told anything, and serialization failures and deadlocks are
retried by running the whole request again on a fresh transaction.

With a read replica (db/replicas.py), a GET runs on it, READ ONLY, and runs again on the
primary when the replica is unfit, loses its connection, or the caller turns out (once
authenticated) to have written lately; a request of any other method runs on the primary
and marks its caller as a recent writer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog
from fastapi import Request, Response
from fastapi.routing import APIRoute

from tradeops.db.errors import is_connection_failure, means_unavailable
from tradeops.db.pool import Database
from tradeops.db.replicas import ReadReplica
from tradeops.db.uow import (
    RETRYABLE_SQLSTATES,
    ConnectionSource,
    UnitOfWork,
    in_transaction,
    is_retryable,
    sqlstate_of,
)

log = structlog.get_logger(component="tradeops.read_replica")

READ_METHODS = frozenset({"GET", "HEAD"})

# A route's answer in one statement, without a request transaction (migration 0019): the
# response, or None when the request is not in the shape it serves (a malformed id, no
# credentials), which the route's endpoint then answers as documented, in a transaction.
# A one-statement write may also raise NOT_RECORDED_ALONE, undoing itself whole, for what it
# would otherwise have to explain (migration 0038): the endpoint answers that too.
OneStatement = Callable[[ConnectionSource, Request], Awaitable[Response | None]]
NOT_RECORDED_ALONE = "TO001"
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
T = TypeVar("T")


# A route endpoint's arguments, taken from the request without FastAPI's dependency solving,
# or None when the request is not in the shape they take (a body that does not validate,
# say): FastAPI then solves them and answers any error as documented.
Arguments = Callable[[Request], Awaitable[dict[str, Any] | None]]


def called_directly(arguments: Arguments) -> Callable[[Endpoint], Endpoint]:
    """Mark an endpoint of a TransactionalRoute as called with `arguments` when they can be
    taken: the same endpoint, in the same transaction, without the generic solving of its
    parameters (about a fifth of a write's CPU in our stack, docs/benchmarks.md)."""

    def mark(endpoint: Endpoint) -> Endpoint:
        endpoint.called_directly = arguments  # type: ignore[attr-defined]
        return endpoint

    return mark


def answered_in_one_statement(answer: OneStatement) -> Callable[[Endpoint], Endpoint]:
    """Mark an endpoint of a TransactionalRoute as answered by `answer` when it can: FastAPI
    still documents and validates the endpoint (its OpenAPI, its 422s and 401s), while the
    common request skips the dependency solving and the transaction's three extra round
    trips."""

    def mark(endpoint: Endpoint) -> Endpoint:
        endpoint.answered_in_one_statement = answer  # type: ignore[attr-defined]
        return endpoint

    return mark


class ReadOwnWrites(Exception):
    """Raised on the replica for a caller that wrote lately: the request runs on the primary."""


def reads_own_writes(request: Request, user_id: int) -> None:
    """Called as soon as a request's caller is known: on the replica, a caller that wrote
    within read_your_writes_seconds is sent to the primary, before anything is read."""
    replica: ReadReplica | None = getattr(request.state, "on_replica", None)
    if replica is not None and replica.wrote_recently(user_id):
        raise ReadOwnWrites


def _replica_unavailable(error: BaseException) -> bool:
    code = sqlstate_of(error)
    return is_connection_failure(error) or (code is not None and means_unavailable(code))


def _recovery_conflict(error: BaseException) -> bool:
    """A replica cancels a read that conflicts with replaying the primary's changes as a
    serialization failure or deadlock; retried there in vain, it runs on the primary."""
    return sqlstate_of(error) in RETRYABLE_SQLSTATES


async def read_where_fit(request: Request, read: Callable[[Database], Awaitable[T]]) -> T:
    """`read` on the read replica when one may serve it, else on the primary: also when the
    caller turns out to have written lately, the replica conflicts with replaying the
    primary's changes, or it is unavailable (then it is set aside until it is fit again)."""
    replica: ReadReplica | None = request.app.state.read_replica
    db = None if replica is None else replica.for_reads()
    if replica is not None and db is not None:
        request.state.on_replica = replica
        try:
            return await read(db)
        except ReadOwnWrites:
            pass
        except Exception as error:
            if not _recovery_conflict(error):
                if not _replica_unavailable(error):
                    raise
                replica.lost()
                log.warning("read replica lost; reading on the primary", error=repr(error))
        finally:
            request.state.on_replica = None
    return await read(request.app.state.db)


class _NotInItsShape(Exception):
    """The request is not in the shape its endpoint is called directly with (a body that does
    not validate): what was begun is rolled back, and the framework answers it as documented."""


# A request answered ahead of the framework's own layers (tradeops.hot_paths), or None when
# it is not in the shape the shortcut serves.
AnsweredAhead = Callable[[Request], Awaitable[Response | None]]


class TransactionalRoute(APIRoute):
    # Set for a route with a shortcut (answered_in_one_statement, called_directly).
    answered_ahead: AnsweredAhead | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        reads_only = (
            self.methods is not None and bool(self.methods) and self.methods <= READ_METHODS
        )
        one_statement: OneStatement | None = getattr(
            self.endpoint, "answered_in_one_statement", None
        )
        direct: Arguments | None = getattr(self.endpoint, "called_directly", None)
        endpoint = self.endpoint

        async def directly(request: Request) -> Response:
            arguments = None if direct is None else await direct(request)
            if arguments is None:
                raise _NotInItsShape
            response: Response = await endpoint(**arguments)
            return response

        async def answer(request: Request) -> Response:
            if direct is not None:
                try:
                    return await directly(request)
                except _NotInItsShape:
                    pass
            return await handle(request)

        async def run_on(
            db: Database, request: Request, respond_with: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            if one_statement is not None:
                try:
                    response = await one_statement(db, request)
                except Exception as error:
                    # A serialization failure, a deadlock or the statement's own refusal
                    # undid it whole: the transaction below runs the request again (and
                    # again if it must).
                    if not (is_retryable(error) or sqlstate_of(error) == NOT_RECORDED_ALONE):
                        raise
                    response = None
                if response is not None:
                    return response

            async def respond(uow: UnitOfWork) -> Response:
                # Anything raised rolls back; a returned response is committed before it is
                # sent. A write that must outlive a failure is not made here but with
                # uow.record_despite_failure, after this transaction rolled back.
                # Each attempt authenticates again, in its own transaction (deps.py).
                # The transaction's own unit of work: what it is handed to send after the
                # commit (UnitOfWork.wake_after_commit) is sent only if it commits.
                request.state.uow, request.state.session = uow, None
                try:
                    return await respond_with(request)
                finally:
                    request.state.uow, request.state.session = None, None

            settings = request.app.state.settings
            return await in_transaction(db, respond, attempts=settings.db_retry_attempts)

        async def on_primary(
            request: Request, respond_with: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            response = await run_on(request.app.state.db, request, respond_with)
            replica: ReadReplica | None = request.app.state.read_replica
            principal = getattr(request.state, "principal", None)
            if replica is not None and principal is not None:
                replica.note_write(principal.user_id)
            return response

        async def handle_in_transaction(request: Request) -> Response:
            if reads_only:
                return await read_where_fit(request, lambda db: run_on(db, request, answer))
            return await on_primary(request, answer)

        async def read_in_one_statement(request: Request) -> Response | None:
            assert one_statement is not None
            return await read_where_fit(request, lambda db: one_statement(db, request))

        async def write_directly(request: Request) -> Response | None:
            try:
                return await on_primary(request, directly)
            except _NotInItsShape:
                return None

        if reads_only and one_statement is not None:
            self.answered_ahead = read_in_one_statement
        elif not reads_only and direct is not None:
            self.answered_ahead = write_directly
        return handle_in_transaction
