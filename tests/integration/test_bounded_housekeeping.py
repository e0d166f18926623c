"""Housekeeping stays bounded: expired idempotency keys go in short batches, each its own
transaction, a round stops at its limit, and a failing purge never undoes the checkpoint."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import SEED_ORDER, Cast
from tradeops.auth.principal import SYSTEM
from tradeops.idempotency.service import Purge, purge_expired
from tradeops.maintenance import run_round
from tradeops.settings import Settings


async def expired_and_fresh_keys(owner_engine: AsyncEngine, expired: int, fresh: int) -> None:
    async with owner_engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO idempotency_keys (principal, key, fingerprint, created_at)"
                " SELECT 'user:1', 'old-' || n, 'fp', now() - interval '25 hours'"
                " FROM generate_series(1, :expired) n"
                " UNION ALL SELECT 'user:1', 'new-' || n, 'fp', now()"
                " FROM generate_series(1, :fresh) n"
            ),
            {"expired": expired, "fresh": fresh},
        )


async def keys_left(owner_engine: AsyncEngine) -> set[str]:
    async with owner_engine.connect() as conn:
        return set((await conn.execute(text("SELECT key FROM idempotency_keys"))).scalars())


async def test_expired_keys_go_in_batches_of_their_own(
    app: FastAPI, owner_engine: AsyncEngine
) -> None:
    await expired_and_fresh_keys(owner_engine, expired=35, fresh=3)
    purged = await purge_expired(app.state.db, SYSTEM, batch=10)
    # 10 + 10 + 10 + 5: four transactions, none deleting more than ten keys.
    assert purged == Purge(keys=35, batches=4, done=True)
    assert await keys_left(owner_engine) == {"new-1", "new-2", "new-3"}


async def test_a_round_stops_at_its_limit_and_the_next_goes_on(
    app: FastAPI, owner_engine: AsyncEngine
) -> None:
    await expired_and_fresh_keys(owner_engine, expired=35, fresh=1)
    first = await purge_expired(app.state.db, SYSTEM, batch=10, round_limit=20)
    assert first == Purge(keys=20, batches=2, done=False)
    assert len(await keys_left(owner_engine)) == 16
    second = await purge_expired(app.state.db, SYSTEM, batch=10, round_limit=20)
    assert second == Purge(keys=15, batches=2, done=True)
    assert await keys_left(owner_engine) == {"new-1"}


async def test_the_checkpoint_stays_signed_when_the_purge_fails(
    app: FastAPI,
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    settings: Settings,
) -> None:
    created = await client.post("/api/v1/orders", json=SEED_ORDER, headers=cast["trader"])
    assert created.status_code == 201, created.text
    await expired_and_fresh_keys(owner_engine, expired=5, fresh=0)
    round_settings = settings.model_copy(update={"audit_settle_seconds": 0, "purge_batch": 2})
    # Another session holds the table: every purge batch gives up after its lock timeout.
    async with owner_engine.connect() as blocker:
        await blocker.execute(text("LOCK TABLE idempotency_keys IN ACCESS EXCLUSIVE MODE"))
        done = await asyncio.wait_for(run_round(app.state.db, round_settings), timeout=30)
        await blocker.rollback()
    assert done.failed == ["idempotency_keys"]
    assert done.checkpoint is not None
    async with owner_engine.connect() as conn:
        signed = await conn.scalar(text("SELECT max(upto_id) FROM audit_checkpoints"))
    assert signed == done.checkpoint.upto_id
    assert len(await keys_left(owner_engine)) == 5  # the purge is left to the next round
    later = await run_round(app.state.db, round_settings)
    assert later.failed == [] and later.purge == Purge(keys=5, batches=3, done=True)
