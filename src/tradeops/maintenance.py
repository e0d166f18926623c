"""Housekeeping the API processes run by themselves: audit checkpoints, expired idempotency keys,
forgotten sign-in failures.

Every process runs the loop. Each step is a transaction (or, for the purge, a series of short
transactions) of its own, so a step that fails, a purge meeting a lock, say, undoes nothing
another step did: the checkpoint stays signed. Checkpoints are signed by one process per round
(a transaction-scoped advisory lock); purges run side by side, each batch skipping the keys
another has locked, so adding processes adds no duplicate work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog

from tradeops.audit import service as audit
from tradeops.audit.repository import Checkpoint
from tradeops.auth.principal import SYSTEM
from tradeops.auth.sign_in import forget_old_failures
from tradeops.background import in_background
from tradeops.db.locks import try_lock
from tradeops.db.pool import Database
from tradeops.db.uow import unit_of_work
from tradeops.idempotency.service import Purge, purge_expired
from tradeops.settings import Settings

log = structlog.get_logger(component="tradeops.maintenance")


@dataclass(slots=True)
class Round:
    """What one round did; `failed` names the steps that raised (each is logged)."""

    checkpoint: Checkpoint | None = None
    purge: Purge | None = None
    sign_in_failures_forgotten: int = 0
    failed: list[str] = field(default_factory=list)


async def run_round(db: Database, settings: Settings) -> Round:
    done = Round()
    try:
        done.checkpoint = await _sign_checkpoint(db, settings)
    except Exception:
        log.exception("housekeeping step failed", step="checkpoint")
        done.failed.append("checkpoint")
    try:
        done.purge = await purge_expired(
            db,
            SYSTEM,
            keep_hours=settings.idempotency_keep_hours,
            batch=settings.purge_batch,
            round_limit=settings.purge_round_limit,
        )
    except Exception:
        log.exception("housekeeping step failed", step="idempotency_keys")
        done.failed.append("idempotency_keys")
    try:
        done.sign_in_failures_forgotten = await _forget_sign_in_failures(db, settings)
    except Exception:
        log.exception("housekeeping step failed", step="sign_in_failures")
        done.failed.append("sign_in_failures")
    _log(done)
    return done


async def _sign_checkpoint(db: Database, settings: Settings) -> Checkpoint | None:
    async with unit_of_work(db, SYSTEM, "maintenance") as uow:
        if not await try_lock(uow, "tradeops.maintenance"):
            return None  # another process is signing this round
        key = settings.audit_key.get_secret_value().encode()
        return await audit.create_checkpoint(
            uow, SYSTEM, key, settle_seconds=settings.audit_settle_seconds
        )


async def _forget_sign_in_failures(db: Database, settings: Settings) -> int:
    async with unit_of_work(db, SYSTEM, "maintenance") as uow:
        return await forget_old_failures(uow, window_seconds=settings.login_failure_window_seconds)


def _log(done: Round) -> None:
    purged = done.purge.keys if done.purge else 0
    if done.checkpoint or purged or done.sign_in_failures_forgotten:
        log.info(
            "housekeeping",
            checkpoint_upto=done.checkpoint.upto_id if done.checkpoint else None,
            idempotency_keys_purged=purged,
            idempotency_purge_batches=done.purge.batches if done.purge else 0,
            # False: the round limit was reached and expired keys remain for the next rounds.
            idempotency_purge_done=done.purge.done if done.purge else None,
            sign_in_failures_forgotten=done.sign_in_failures_forgotten,
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
    if not settings.maintenance:
        yield
        return
    async with in_background(maintenance_loop(db, settings)):
        yield
