"""Statements on idempotency_keys that housekeeping runs (the request path's are in service.py)."""

from __future__ import annotations

from dataclasses import dataclass

from tradeops.db.prepared import prepare, query
from tradeops.db.uow import UnitOfWork


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
