"""Reads on a streaming replica, and when a read goes to the primary instead.

A GET runs on the replica's pool (TRADEOPS_READ_DATABASE_URL) in a READ ONLY transaction
(db/http.py), except:

- for a caller (a user, by any of its credentials) that committed a write through this process
  less than `read_your_writes_seconds` ago: it reads on the primary and sees its own write;
- while the replica is unfit: its last check (every `read_check_seconds`) failed, is over two
  intervals old, or found it more than `read_max_lag_seconds` behind the primary, or a read
  on it lost its connection since (that read runs again on the primary).

A fit replica had replayed, at a check at most two intervals old, everything committed more
than read_max_lag_seconds before that check; settings require read_your_writes_seconds >=
read_max_lag_seconds + 2 * read_check_seconds, so by the time a writer's reads go back to
the replica, it has replayed the write.
Writes are remembered per process: see docs/operations.md#read-replicas for several.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from tradeops.background import in_background
from tradeops.db.pool import Database
from tradeops.settings import Settings

log = structlog.get_logger(component="tradeops.read_replica")

# The primary's WAL position first, then how far the replica has replayed: a write between
# the two counts for nothing, so the lag is never understated. The insert position, not the
# written one: a commit with synchronous_commit=off returns before its record is written.
_PRIMARY_POSITION = "SELECT pg_current_wal_insert_lsn()::text"
_REPLICA_POSITION = """
SELECT pg_is_in_recovery() AS in_recovery,
       pg_last_wal_replay_lsn()::text AS replayed,
       EXTRACT(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS replay_age
"""
_FORGET_WRITES_AT = 4096  # remembered writers before the stale ones are swept out


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """The replica as its last check found it."""

    reachable: bool
    role: str | None = None  # "replica" (in recovery) or "primary"
    lag_seconds: float | None = None
    lag_bytes: int | None = None  # None when the primary's position could not be read
    checked_at: float = 0.0  # time.monotonic()


def wal_position(lsn: str | None) -> int | None:
    """A pg_lsn's text ('16/B374D848') as a byte position."""
    if lsn is None:
        return None
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def lag_of(
    replayed: int,
    replay_age: float | None,
    primary_positions: Sequence[tuple[float, int]],
    now: float,
    *,
    latest_is_now: bool = True,
) -> float:
    """Seconds behind the primary, at most: none when it has replayed all the primary had
    written at the latest sample, taken by this check (`latest_is_now`), else the time since
    the last sample it had caught up with (`primary_positions`: (time.monotonic(), primary's
    WAL position), oldest first), or the age of its last replayed commit, whichever is less.
    Neither alone will do: an idle primary's last commit may be minutes old when a new write
    arrives, and the samples are one check interval apart. When this check could not read the
    primary's position, an earlier sample it has caught up with bounds the lag only by the
    time since: the primary may have written since."""
    if latest_is_now and primary_positions and primary_positions[-1][1] <= replayed:
        return 0.0
    caught_up = [at for at, position in primary_positions if position <= replayed]
    since_caught_up = now - caught_up[-1] if caught_up else math.inf
    age = math.inf if replay_age is None else max(0.0, replay_age)
    return min(age, since_caught_up)


class ReadReplica:
    """The read pool, its lag, and who wrote lately, for choosing where a read runs."""

    def __init__(self, settings: Settings, primary: Database, replica: Database) -> None:
        self.primary = primary
        self.replica = replica
        self._max_lag = settings.read_max_lag_seconds
        self._own_writes = settings.read_your_writes_seconds
        self._check_every = settings.read_check_seconds
        self._writes: dict[int, float] = {}
        # The primary's positions at recent checks: enough to tell any lag up to the allowed.
        self._positions: deque[tuple[float, int]] = deque()
        self._keep_positions = self._max_lag + 3 * self._check_every
        self.state = ReplicaState(reachable=False)

    def for_reads(self) -> Database | None:
        """The replica's pool if it is fit for reads now, else None (read on the primary):
        reachable, within the lag allowed, and found so by a check at most two intervals old
        (a check stuck on a hung server must not vouch for it)."""
        state, lag = self.state, self.state.lag_seconds
        if not state.reachable or lag is None or lag > self._max_lag:
            return None
        if time.monotonic() - state.checked_at > 2 * self._check_every:
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
            asked_primary_at = time.monotonic()  # it had written no more than this by then
            primary_position = await self._primary_position()
            async with asyncio.timeout(self._check_every * 2 + 1):
                async with self.replica.acquire() as connection:
                    row = await connection.fetchrow(_REPLICA_POSITION)
        except Exception as error:  # unreachable, refusing, timed out: not fit, said once
            if self.state.reachable or self.state.checked_at == 0.0:
                log.warning("read replica unreachable; reads go to the primary", error=repr(error))
            self.state = ReplicaState(reachable=False, checked_at=time.monotonic())
            return self.state
        assert row is not None
        self.state = self._measured(row, asked_primary_at, primary_position)
        return self.state

    def _measured(self, row: Any, asked_at: float, primary_position: int | None) -> ReplicaState:
        now = time.monotonic()
        if not row["in_recovery"]:  # a primary (prefer-standby found no standby): no lag
            return ReplicaState(True, "primary", 0.0, 0, now)
        replayed = wal_position(row["replayed"])
        if replayed is None:
            return ReplicaState(True, "replica", math.inf, None, now)
        if primary_position is not None:
            self._positions.append((asked_at, primary_position))
        while self._positions and now - self._positions[0][0] > self._keep_positions:
            self._positions.popleft()
        # Without the primary's position, what the replica has received proves nothing: a WAL
        # receiver cut off from a primary that still takes writes has received no more than
        # it replayed, however far behind. The lag then runs from the last check that found
        # it caught up (or its last replayed commit), and how many bytes is not known.
        lag = lag_of(
            replayed,
            row["replay_age"],
            self._positions,
            now,
            latest_is_now=primary_position is not None,
        )
        behind = None if primary_position is None else max(0, primary_position - replayed)
        return ReplicaState(True, "replica", lag, behind, now)

    async def _primary_position(self) -> int | None:
        try:
            async with asyncio.timeout(self._check_every * 2 + 1):
                async with self.primary.acquire() as connection:
                    return wal_position(await connection.fetchval(_PRIMARY_POSITION))
        except Exception:  # down, unreachable or in recovery: earlier checks bound the lag
            return None

    async def _check_every_interval(self) -> None:
        while True:
            started = time.monotonic()
            await self.check()
            await asyncio.sleep(max(0.0, self._check_every - (time.monotonic() - started)))

    @contextlib.asynccontextmanager
    async def checking(self) -> AsyncIterator[None]:
        """Check the replica every read_check_seconds while the app runs."""
        async with in_background(self._check_every_interval()):
            yield
