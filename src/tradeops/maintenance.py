"""Housekeeping the API processes run by themselves: audit checkpoints, expired idempotency keys,
forgotten sign-in failures.

Every process runs the loop; a transaction-scoped advisory lock lets one of them act per round,
so adding processes adds no duplicate work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from sqlalchemy import text

from tradeops.audit import service as audit
from tradeops.auth.principal import SYSTEM
from tradeops.auth.sign_in import forget_old_failures
from tradeops.db.pool import Database
from tradeops.db.uow import UnitOfWork, unit_of_work
from tradeops.idempotency.service import purge_expired
from tradeops.settings import Settings

log = structlog.get_logger(component="tradeops.maintenance")
_ROUND_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtext('tradeops.maintenance'))")


async def run_round(db: Database, settings: Settings) -> None:
    async with unit_of_work(db, SYSTEM, "maintenance") as uow:
        if not await uow.scalar(_ROUND_LOCK):
            return
        await housekeeping(uow, settings)


async def housekeeping(uow: UnitOfWork, settings: Settings) -> None:
    key = settings.audit_key.get_secret_value().encode()
    checkpoint = await audit.create_checkpoint(
        uow, SYSTEM, key, settle_seconds=settings.audit_settle_seconds
    )
    purged = await purge_expired(uow, keep_hours=settings.idempotency_keep_hours)
    forgotten = await forget_old_failures(uow, window_seconds=settings.login_failure_window_seconds)
    if checkpoint or purged or forgotten:
        log.info(
            "housekeeping",
            checkpoint_upto=checkpoint.upto_id if checkpoint else None,
            idempotency_keys_purged=purged,
            sign_in_failures_forgotten=forgotten,
        )


async def maintenance_loop(db: Database, settings: Settings) -> None:
    while True:
        await asyncio.sleep(settings.audit_checkpoint_seconds)
        try:
            await run_round(db, settings)
        except Exception:
            log.exception("housekeeping failed")


@contextlib.asynccontextmanager
async def running_maintenance(db: Database, settings: Settings) -> AsyncIterator[None]:
    task = asyncio.create_task(maintenance_loop(db, settings)) if settings.maintenance else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
