"""HTTP side of the unit of work: one transaction per request, committed before the response.

A route class rather than a dependency with `yield`, because the commit must finish (and may
fail) before the client is told anything, and serialization failures and deadlocks are
retried by running the whole request again on a fresh transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from tradeops.db.uow import UnitOfWork, in_transaction


class TransactionalRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_in_transaction(request: Request) -> Response:
            async def respond(uow: UnitOfWork) -> Response:
                # Anything raised rolls back; a returned response is committed before it is
                # sent. A write that must outlive a failure is not made here but with
                # uow.record_despite_failure, after this transaction rolled back.
                request.state.driver = uow.driver
                try:
                    return await handle(request)
                finally:
                    request.state.driver = None

            settings = request.app.state.settings
            return await in_transaction(
                request.app.state.db, respond, attempts=settings.db_retry_attempts
            )

        return handle_in_transaction
