"""Statements on idempotency_keys: the request path's (reserve, replay, complete) and
housekeeping's (purge)."""

from __future__ import annotations

from dataclasses import dataclass

from tradeops.db.prepared import prepare, query
from tradeops.db.uow import UnitOfWork


@dataclass(frozen=True, slots=True)
class Reserved:
    """The key was new: this request is the first, and runs."""

    reserved: bool


@dataclass(frozen=True, slots=True)
class Stored:
    """What the first request with a key stored. Its response is never missing: the key and
    the response commit in one transaction, and a duplicate reads the row only after that."""

    fingerprint: str
    response_status: int
    response_body: bytes
    response_headers: dict[str, str]


# Keys are the context's principal's (tradeops_actor(), which row-level security compares
# too). No row when the key is taken: ON CONFLICT waits for the request holding it to finish.
RESERVE = query(
    "INSERT INTO idempotency_keys (principal, key, fingerprint)"
    " VALUES (tradeops_actor(), :key, :fp)"
    " ON CONFLICT (principal, key) DO NOTHING RETURNING true AS reserved",
    Reserved,
)
STORED = query(
    "SELECT fingerprint, response_status, response_body, response_headers FROM idempotency_keys"
    " WHERE principal = tradeops_actor() AND key = :key",
    Stored,
)
COMPLETE = prepare(
    "UPDATE idempotency_keys SET response_status = :status, response_body = :body,"
    " response_headers = CAST(:headers AS jsonb) WHERE principal = tradeops_actor() AND key = :key"
)


@dataclass(frozen=True, slots=True)
class Purged:
    keys: int


# Housekeeping gives way to requests: it waits at most this long for a lock, then fails the
# batch (retried next round) rather than queueing behind, or ahead of, a request.
_YIELD_TO_REQUESTS = prepare("SELECT set_config('lock_timeout', '1s', true)")

# One batch: the oldest expired keys, at most :batch of them, by primary key. SKIP LOCKED
# passes over a key a request is replaying right now and leaves it to the next round, and lets
# two processes purge side by side without waiting for each other or deleting twice.
PURGE_BATCH = query(
    "WITH deleted AS (DELETE FROM idempotency_keys k USING ("
    " SELECT principal, key FROM idempotency_keys"
    " WHERE created_at < now() - make_interval(hours => :keep_hours)"
    " ORDER BY created_at LIMIT :batch FOR UPDATE SKIP LOCKED) expired"
    " WHERE k.principal = expired.principal AND k.key = expired.key RETURNING 1)"
    " SELECT count(*) AS keys FROM deleted",
    Purged,
)


async def delete_expired_batch(uow: UnitOfWork, *, keep_hours: int, batch: int) -> int:
    """Delete at most `batch` keys older than `keep_hours`; how many."""
    await uow.execute(_YIELD_TO_REQUESTS)
    purged = await uow.row(PURGE_BATCH, {"keep_hours": keep_hours, "batch": batch})
    assert purged is not None  # an aggregate without GROUP BY answers one row
    return purged.keys
