"""HTTP side of the unit of work: one transaction per request, committed before the response.

A route class rather than a dependency with `yield`, because the commit must finish (and may
fail) before the client is told anything, and serialization failures and deadlocks are
retried by running the whole request again on a fresh transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
from fastapi import Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncEngine

from tradeops.db.uow import backoff_seconds, driver_of, is_retryable


class TransactionalRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_in_transaction(request: Request) -> Response:
            engine: AsyncEngine = request.app.state.engine
            attempts: int = request.app.state.settings.db_retry_attempts
            for attempt in range(attempts):
                try:
                    async with engine.connect() as connection:
                        driver = await driver_of(connection)
                        # Anything raised rolls back; a returned response (even a 4xx that
                        # records a failed login) is committed before it is sent.
                        async with driver.transaction():
                            request.state.driver = driver
                            return await handle(request)
                except asyncpg.PostgresError as error:
                    if not is_retryable(error) or attempt == attempts - 1:
                        raise
                    await asyncio.sleep(backoff_seconds(attempt))
                finally:
                    request.state.driver = None
            raise AssertionError("unreachable")

        return handle_in_transaction
