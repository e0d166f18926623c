"""Reads on a streaming replica, and when a read goes to the primary instead.

A GET runs on the replica's pool (TRADEOPS_READ_DATABASE_URL) in a READ ONLY transaction
(db/http.py), except:

- for a caller (a user, by any of its credentials) that committed a write through this process
  less than `read_your_writes_seconds` ago: it reads on the primary and sees its own write;
- while the replica is unfit: its last check (every `read_check_seconds`) failed or found it
  more than `read_max_lag_seconds` behind the primary, or a read on it lost its connection
  since (that read runs again on the primary).

Settings require read_your_writes_seconds >= read_max_lag_seconds + read_check_seconds, so
by the time a writer's reads go back to a replica, a fit replica has replayed the write.
Writes are remembered per process: see docs/operations.md#read-replicas for several.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from tradeops.db.pool import Database
from tradeops.settings import Settings

log = structlog.get_logger(component="tradeops.read_replica")

# The primary's WAL position first, then how far the replica has replayed: a write between
# the two counts for nothing, so the lag is never understated.
_PRIMARY_POSITION = "SELECT pg_current_wal_lsn()::text"
# Without the primary's position (it is down), what the replica has received stands for it.
_REPLICA_POSITION = """
SELECT pg_is_in_recovery() AS in_recovery,
       pg_wal_lsn_diff(COALESCE($1::text::pg_lsn, pg_last_wal_receive_lsn()),
                       pg_last_wal_replay_lsn()) AS lag_bytes,
       EXTRACT(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS replay_age
"""
_FORGET_WRITES_AT = 4096  # remembered writers before the stale ones are swept out


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """The replica as its last check found it."""

    reachable: bool
    role: str | None = None  # "replica" (in recovery) or "primary"
    lag_seconds: float | None = None
    lag_bytes: int | None = None
    checked_at: float = 0.0  # time.monotonic()


def lag_of(in_recovery: bool, lag_bytes: float | None, replay_age: float | None) -> float:
    """Seconds behind the primary: none when it has replayed all the primary has written (an
    idle primary writes nothing, however old its last commit), else the age of the last
    transaction replayed; unknown counts as infinitely far."""
    if not in_recovery:
        return 0.0
    if lag_bytes is None:
        return math.inf
    if lag_bytes <= 0:
        return 0.0
    return math.inf if replay_age is None else max(0.0, replay_age)


class ReadReplica:
    """The read pool, its lag, and who wrote lately, for choosing where a read runs."""

    def __init__(self, settings: Settings, primary: Database, replica: Database) -> None:
        self.primary = primary
        self.replica = replica
        self._max_lag = settings.read_max_lag_seconds
        self._own_writes = settings.read_your_writes_seconds
        self._check_every = settings.read_check_seconds
        self._writes: dict[int, float] = {}
        self.state = ReplicaState(reachable=False)

    def for_reads(self) -> Database | None:
        """The replica's pool if it is fit for reads now, else None (read on the primary)."""
        lag = self.state.lag_seconds
        if not self.state.reachable or lag is None or lag > self._max_lag:
            return None
        return self.replica

    def note_write(self, user_id: int) -> None:
        now = time.monotonic()
        self._writes[user_id] = now
        if len(self._writes) > _FORGET_WRITES_AT:
            self._writes = {
                user: at for user, at in self._writes.items() if now - at < self._own_writes
            }

    def wrote_recently(self, user_id: int) -> bool:
        at = self._writes.get(user_id)
        return at is not None and time.monotonic() - at < self._own_writes

    def lost(self) -> None:
        """A read on the replica lost its connection: none goes there until a check succeeds."""
        self.state = ReplicaState(reachable=False, checked_at=time.monotonic())

    async def check(self) -> ReplicaState:
        try:
            primary_lsn = await self._primary_position()
            async with asyncio.timeout(self._check_every * 2 + 1):
                async with self.replica.acquire() as connection:
                    row = await connection.fetchrow(_REPLICA_POSITION, primary_lsn)
        except Exception as error:  # unreachable, refusing, timed out: not fit, said once
            if self.state.reachable or self.state.checked_at == 0.0:
                log.warning("read replica unreachable; reads go to the primary", error=repr(error))
            self.state = ReplicaState(reachable=False, checked_at=time.monotonic())
            return self.state
        assert row is not None
        lag_bytes = None if row["lag_bytes"] is None else int(row["lag_bytes"])
        self.state = ReplicaState(
            reachable=True,
            role="replica" if row["in_recovery"] else "primary",
            lag_seconds=lag_of(row["in_recovery"], lag_bytes, row["replay_age"]),
            lag_bytes=max(0, lag_bytes) if lag_bytes is not None else None,
            checked_at=time.monotonic(),
        )
        return self.state

    async def _primary_position(self) -> str | None:
        try:
            async with asyncio.timeout(self._check_every * 2 + 1):
                async with self.primary.acquire() as connection:
                    position: str = await connection.fetchval(_PRIMARY_POSITION)
                    return position
        except Exception:  # down, or itself in recovery: the replica's own view must do
            return None

    async def _check_every_interval(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self._check_every)

    @contextlib.asynccontextmanager
    async def checking(self) -> AsyncIterator[None]:
        """Check the replica every read_check_seconds while the app runs."""
        task = asyncio.create_task(self._check_every_interval())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
