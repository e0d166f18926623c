"""The HTTP face of idempotency: the Idempotency-Key header around a route's work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Header, Request, Response
from pydantic import BaseModel

from tradeops.db.uow import UnitOfWork
from tradeops.idempotency.service import StoredResponse, fingerprint, run_once

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Send a unique value (e.g. a UUID) to make retries safe: the same key and "
        "body replay the first response (header Idempotent-Replayed: true); the same key with "
        "another body is refused with 422. Keys are kept at least 24 hours.",
    ),
]


async def respond_once(
    request: Request,
    uow: UnitOfWork,
    key: str | None,
    produce: Callable[[], Awaitable[tuple[int, BaseModel, dict[str, str]]]],
) -> Response:
    async def stored() -> StoredResponse:
        status, model, headers = await produce()
        return StoredResponse(status, model.model_dump_json().encode(), headers)

    if key is None:
        response = await stored()
    else:
        body = await request.body()
        # The query string is part of what is asked (a bulk cancel's filters).
        query = request.url.query
        target = f"{request.url.path}?{query}" if query else request.url.path
        request_fingerprint = fingerprint(request.method, target, body)
        response = await run_once(uow, key, request_fingerprint, stored)
    headers = dict(response.headers)
    if response.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        response.body, status_code=response.status, headers=headers, media_type="application/json"
    )
