"""When each API key was last used, written off the request path.

Authentication only reads, so it can run on a read replica (docs/operations.md#read-replicas):
a key whose `last_used_at` is over a minute old is noted here, in the process, and the noted
keys are written in one UPDATE on the primary every few seconds and when the process stops.
`last_used_at` tells when a key was last used to within about a minute (as before) plus the
flush interval; a process killed outright loses at most that interval's notes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog

from tradeops.auth import repository as repo
from tradeops.auth.principal import SYSTEM
from tradeops.background import in_background
from tradeops.db.pool import Database
from tradeops.db.uow import run_in_transaction

log = structlog.get_logger(component="tradeops.key_usage")

FLUSH_SECONDS = 5.0


class KeyUsage:
    """API keys used since the last flush, by id."""

    def __init__(self) -> None:
        self._used: set[int] = set()

    def note(self, key_id: int) -> None:
        self._used.add(key_id)

    async def flush(self, db: Database) -> int:
        """Write the noted keys' last use on `db` (the primary); how many were noted. Notes
        that could not be written are kept for the next flush."""
        if not self._used:
            return 0
        ids, self._used = sorted(self._used), set()
        try:
            await run_in_transaction(
                db,
                SYSTEM,
                lambda uow: uow.execute(repo.TOUCH_KEYS, {"ids": ids}),
                request_id="key-usage",
            )
        except BaseException:
            self._used.update(ids)
            raise
        return len(ids)

    async def _flush_every(self, db: Database, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.flush(db)
            except Exception:
                log.warning("api key usage not written yet", keys=len(self._used), exc_info=True)

    @contextlib.asynccontextmanager
    async def flushing(self, db: Database, seconds: float = FLUSH_SECONDS) -> AsyncIterator[None]:
        """Flush every `seconds` while the app runs, and once more as it stops."""
        try:
            async with in_background(self._flush_every(db, seconds)):
                yield
        finally:
            try:
                await self.flush(db)
            except Exception:
                log.warning("api key usage lost at shutdown", keys=len(self._used), exc_info=True)
