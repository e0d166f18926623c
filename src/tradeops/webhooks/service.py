"""Webhooks: admins register endpoints; the worker delivers the outbox to them.

Delivery is at least once: each delivery is claimed for one attempt in a short transaction,
POSTed with no transaction open, and its outcome recorded in another. The webhook-id is the
delivery's and never changes, so a receiver drops a repeat by it; the webhook-timestamp and
the signature are those of the attempt. Orders never wait for any of it: the outbox row is
all their transaction writes.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import cache
from urllib.parse import urlsplit

import httpx
import structlog

from tradeops.audit import recording as audit
from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.db.pool import Database
from tradeops.db.uow import UnitOfWork, in_transaction
from tradeops.desks.service import desk_ids_by_code
from tradeops.errors import InvalidRequest, NotFound
from tradeops.pagination import decode_id_cursor, encode_cursor
from tradeops.settings import Settings
from tradeops.webhooks import repository as repo
from tradeops.webhooks.schemas import (
    DeliveryOut,
    DeliveryPage,
    WebhookCreated,
    WebhookIn,
    WebhookOut,
)
from tradeops.webhooks.signing import new_secret, sign

log = structlog.get_logger(component="tradeops.webhooks")

MAX_BACKOFF_SECONDS = 3600.0
# A run sends batch after batch while they come full, at most this many.
MAX_ROUNDS = 10
USER_AGENT = "tradeops-webhooks/1"


class WebhookNotFound(NotFound):
    slug = "webhook-not-found"
    title = "Webhook not found"


def _checked_url(url: str, *, allow_http: bool) -> str:
    """An absolute http(s) URL with a host. Admins choose where events go (and so may point
    them inside the network); prod takes https only unless TRADEOPS_WEBHOOK_ALLOW_HTTP."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("The URL must be http(s)://host/…", field="url")
    if parts.scheme == "http" and not allow_http:
        raise InvalidRequest("Webhook URLs must be https here.", field="url")
    if parts.username or parts.password:
        raise InvalidRequest("Put no credentials in the URL; verify signatures.", field="url")
    return url


async def create_webhook(
    uow: UnitOfWork, principal: Principal, data: WebhookIn, *, allow_http: bool
) -> WebhookCreated:
    """Register an endpoint; its secret is in this answer only. Audited (without it)."""
    authorize(principal, Action.MANAGE_WEBHOOKS)
    url = _checked_url(data.url, allow_http=allow_http)
    desk_ids = await desk_ids_by_code(uow, sorted(set(data.desks)))
    secret = new_secret()
    created = await uow.row(
        repo.CREATE_ENDPOINT,
        {
            "url": url,
            "secret": secret,
            "event_types": sorted(set(data.event_types)),
            "desk_ids": sorted(desk_ids.values()),
            "created_by": principal.user_id,
        },
    )
    assert created is not None  # an INSERT … RETURNING
    await audit.record(uow, principal, "webhook.created", "webhook", created.id, after=created)
    return WebhookCreated(**created.model_dump(), secret=secret)


async def list_webhooks(uow: UnitOfWork, principal: Principal) -> list[WebhookOut]:
    authorize(principal, Action.MANAGE_WEBHOOKS)
    return await uow.rows(repo.LIST_ENDPOINTS)


async def _endpoint(uow: UnitOfWork, webhook_id: int) -> WebhookOut:
    endpoint = await uow.row(repo.GET_ENDPOINT, {"id": webhook_id})
    if endpoint is None:
        raise WebhookNotFound(f"No webhook {webhook_id}.")
    return endpoint


async def get_webhook(uow: UnitOfWork, principal: Principal, webhook_id: int) -> WebhookOut:
    authorize(principal, Action.MANAGE_WEBHOOKS)
    return await _endpoint(uow, webhook_id)


async def delete_webhook(uow: UnitOfWork, principal: Principal, webhook_id: int) -> WebhookOut:
    """Disable an endpoint: nothing more is sent to it, what it was owed is cancelled, its
    deliveries stay readable. Audited."""
    authorize(principal, Action.MANAGE_WEBHOOKS)
    before = await _endpoint(uow, webhook_id)
    after = await uow.row(repo.DISABLE_ENDPOINT, {"id": webhook_id})
    if after is None:
        raise WebhookNotFound(f"Webhook {webhook_id} is already deleted.")
    await audit.record(
        uow, principal, "webhook.deleted", "webhook", webhook_id, before=before, after=after
    )
    return after


async def list_deliveries(
    uow: UnitOfWork, principal: Principal, webhook_id: int, *, limit: int, after: str | None
) -> DeliveryPage:
    """An endpoint's deliveries, newest first, each with every attempt."""
    authorize(principal, Action.MANAGE_WEBHOOKS)
    await _endpoint(uow, webhook_id)
    rows = await uow.rows(
        repo.LIST_DELIVERIES,
        {"endpoint_id": webhook_id, "after": decode_id_cursor(after), "limit": limit + 1},
    )
    items = [DeliveryOut.model_validate(row, from_attributes=True) for row in rows[:limit]]
    more = len(rows) > limit
    return DeliveryPage(
        items=items, next_cursor=encode_cursor(rows[limit - 1].id) if more else None
    )


# --- delivery (the worker) ----------------------------------------------------------------


def retry_in_seconds(settings: Settings, attempt: int) -> float:
    """Exponential backoff after the `attempt`-th failure, ±25% jitter so that the deliveries
    of a receiver that was down do not all come back in the same instant; never more than
    MAX_BACKOFF_SECONDS apart (at the cap the jitter only shortens the wait, half the time)."""
    base = min(MAX_BACKOFF_SECONDS, settings.webhook_backoff_seconds * 2 ** min(attempt - 1, 30))
    return float(min(MAX_BACKOFF_SECONDS, base * random.uniform(0.75, 1.25)))  # noqa: S311


@cache
def _tls() -> ssl.SSLContext:
    """httpx's default verification (certifi's roots), built once per process: building it
    takes ~100 ms, most of a delivery's latency if every run paid it."""
    return httpx.create_ssl_context(trust_env=False)


@asynccontextmanager
async def http_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """No redirects followed (a receiver may not send events elsewhere), no proxies from the
    environment, one timeout for connecting, sending and the answer's headers."""
    async with httpx.AsyncClient(
        timeout=settings.webhook_timeout_seconds,
        follow_redirects=False,
        trust_env=False,
        verify=_tls(),
        limits=httpx.Limits(max_connections=settings.webhook_batch),
        headers={"user-agent": USER_AGENT},
    ) as client:
        yield client


async def _claim(uow: UnitOfWork, settings: Settings) -> list[repo.Claimed]:
    await uow.execute(repo.CANCEL_ORPHANS)
    return await uow.rows(
        repo.CLAIM_DUE,
        {
            "batch": settings.webhook_batch,
            # Longer than any attempt takes: only a worker that died mid-attempt lets it run out.
            "lease_seconds": 2 * settings.webhook_timeout_seconds + 30,
        },
    )


async def _post(
    client: httpx.AsyncClient, claimed: repo.Claimed, within_seconds: float
) -> tuple[int | None, str | None]:
    """The receiver's status (None: no answer) and what went wrong (None: a 2xx)."""
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": claimed.webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(claimed.secret, claimed.webhook_id, timestamp, claimed.body),
    }
    try:
        # One bound for the whole attempt (httpx's bounds each phase: a receiver dripping its
        # headers would outlast them). Streamed and closed unread: a receiver's answer is its
        # status, whatever its size.
        async with (
            asyncio.timeout(within_seconds),
            client.stream(
                "POST", claimed.url, content=claimed.body.encode(), headers=headers
            ) as response,
        ):
            status = response.status_code
    except Exception as error:  # every failure to get an answer is an attempt that failed
        return None, (f"{type(error).__name__}: {error}".rstrip(": "))[:500]
    return status, None if 200 <= status < 300 else f"HTTP {status}"


async def _attempt(
    db: Database, client: httpx.AsyncClient, settings: Settings, claimed: repo.Claimed
) -> bool:
    """One attempt, recorded; whether it was delivered."""
    at = datetime.now(UTC)
    started = time.perf_counter()
    status_code, error = await _post(client, claimed, settings.webhook_timeout_seconds)
    duration_ms = round((time.perf_counter() - started) * 1000)
    delivered = error is None
    gave_up = not delivered and claimed.attempt >= settings.webhook_max_attempts
    outcome = "delivered" if delivered else "failed" if gave_up else "pending"
    params = {
        "id": claimed.id,
        "attempt": claimed.attempt,
        "at": at,
        "status_code": status_code,
        "error": error,
        "duration_ms": duration_ms,
        "status": outcome,
        "retry_in": 0.0 if outcome != "pending" else retry_in_seconds(settings, claimed.attempt),
    }
    try:
        await in_transaction(db, lambda uow: uow.execute(repo.RECORD_ATTEMPT, params))
    except Exception:
        # Not recorded: the lease runs out and the delivery is tried again, same webhook-id.
        log.exception("webhook_attempt_not_recorded", webhook_id=claimed.webhook_id)
    (log.info if delivered else log.warning)(
        "webhook_attempt",
        webhook_id=claimed.webhook_id,
        attempt=claimed.attempt,
        status_code=status_code,
        error=error,
        outcome=outcome,
        duration_ms=duration_ms,
    )
    return delivered


async def deliver_due(db: Database, settings: Settings) -> int:
    """Send every delivery that is due, up to webhook_batch at once (again while batches
    come full); the number of attempts made. Safe beside other workers doing the same.

    Runs as the database owner (no request context): only it reads the signing secrets."""
    attempts = 0
    async with http_client(settings) as client:
        for _ in range(MAX_ROUNDS):
            claimed = await in_transaction(db, lambda uow: _claim(uow, settings))
            if claimed:
                await asyncio.gather(*(_attempt(db, client, settings, c) for c in claimed))
            attempts += len(claimed)
            if len(claimed) < settings.webhook_batch:
                break
    return attempts
