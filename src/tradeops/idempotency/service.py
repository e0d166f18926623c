"""Idempotent requests, as the IETF Idempotency-Key draft and Stripe describe them.

The key is reserved by inserting it in the request's own transaction. A concurrent duplicate
blocks on that row until the first request commits (then it replays the stored response) or
rolls back (then it runs as if first). So N identical requests act exactly once, and a
request that failed leaves no key behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import orjson

from tradeops.auth.principal import Principal
from tradeops.db.uow import ConnectionSource, UnitOfWork, run_in_transaction
from tradeops.errors import InvalidRequest
from tradeops.idempotency import repository

MAX_KEY_LENGTH = 255


class IdempotencyKeyReused(InvalidRequest):
    slug = "idempotency-key-reused"
    title = "Idempotency-Key reused with a different request"


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: bytes
    headers: dict[str, str]
    replayed: bool = False


def fingerprint(method: str, path: str, body: bytes) -> str:
    """The request's identity: same method, path and JSON body (whatever its key order)."""
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS) if body else b""
    except orjson.JSONDecodeError:
        canonical = body
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()


def valid_key(key: str) -> bool:
    return 1 <= len(key) <= MAX_KEY_LENGTH and key.isprintable()


def check_key(key: str) -> str:
    if not valid_key(key):
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters.",
            field="header.Idempotency-Key",
        )
    return key


async def run_once(
    uow: UnitOfWork,
    key: str,
    request_fingerprint: str,
    produce: Callable[[], Awaitable[StoredResponse]],
) -> StoredResponse:
    """Produce the response once per (principal, key), the principal being the transaction's
    (its context); later calls get the stored one."""
    params = {"key": check_key(key)}
    if await uow.row(repository.RESERVE, {**params, "fp": request_fingerprint}) is None:
        stored = await uow.row(repository.STORED, params)
        assert stored is not None  # the key that conflicted, held (locked) until we commit
        if stored.fingerprint != request_fingerprint:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used for a different request; use a new key.",
                field="header.Idempotency-Key",
            )
        return StoredResponse(
            stored.response_status, stored.response_body, stored.response_headers, replayed=True
        )
    response = await produce()
    await uow.execute(
        repository.COMPLETE,
        {
            **params,
            "status": response.status,
            "body": response.body,
            "headers": orjson.dumps(response.headers).decode(),
        },
    )
    return response


@dataclass(frozen=True, slots=True)
class Purge:
    """What one round of purging did: `keys` deleted in `batches` transactions; `done` when the
    last batch came back short (nothing expired is left), else the round hit its limit."""

    keys: int
    batches: int
    done: bool


async def purge_expired(
    db: ConnectionSource,
    principal: Principal,
    *,
    keep_hours: int = 24,
    batch: int = 1000,
    round_limit: int = 100_000,
) -> Purge:
    """Forget keys older than `keep_hours` (at least 24 h, as clients are promised), `batch` at a
    time, each batch a short transaction of its own, until none is left or `round_limit` keys
    are gone: a backlog of millions never becomes one statement that times out (and takes the
    rest of housekeeping down with it), and what was deleted stays deleted if a later batch
    fails."""
    keep_hours, keys, batches = max(24, keep_hours), 0, 0
    while keys < round_limit:
        size = min(batch, round_limit - keys)
        deleted = await run_in_transaction(
            db,
            principal,
            partial(repository.delete_expired_batch, keep_hours=keep_hours, batch=size),
        )
        keys, batches = keys + deleted, batches + 1
        if deleted < size:
            return Purge(keys=keys, batches=batches, done=True)
    return Purge(keys=keys, batches=batches, done=False)
