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


def request_fingerprint(request: Request, body: bytes) -> str:
    """The request's identity, as a key's first request stored it: its method, its path with
    the query string (a bulk cancel's filters are part of what is asked) and its body."""
    query = request.url.query
    target = f"{request.url.path}?{query}" if query else request.url.path
    return fingerprint(request.method, target, body)


def answered(response: StoredResponse) -> Response:
    """The response to send: the one produced, or the stored one, marked as replayed."""
    headers = dict(response.headers)
    if response.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        response.body, status_code=response.status, headers=headers, media_type="application/json"
    )


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
        return answered(await stored())
    request_identity = request_fingerprint(request, await request.body())
    return answered(await run_once(uow, key, request_identity, stored))
