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
from tradeops.jobs import recovery, tasks
from tradeops.jobs.registry import app as procrastinate_app
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


async def test_one_process_signs_a_round_another_holding_its_lock_signs_none(
    app: FastAPI,
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    settings: Settings,
) -> None:
    created = await client.post("/api/v1/orders", json=SEED_ORDER, headers=cast["trader"])
    assert created.status_code == 201, created.text
    round_settings = settings.model_copy(update={"audit_settle_seconds": 0})
    # Another process's round, in progress: it holds the round's advisory lock.
    async with owner_engine.begin() as other:
        await other.execute(text("SELECT pg_advisory_xact_lock(hashtext('tradeops.maintenance'))"))
        skipped = await asyncio.wait_for(run_round(app.state.db, round_settings), timeout=30)
    assert skipped.failed == [] and skipped.checkpoint is None
    async with owner_engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM audit_checkpoints")) == 0
    signed = await run_round(app.state.db, round_settings)
    assert signed.failed == [] and signed.checkpoint is not None


async def job_finished(
    owner_engine: AsyncEngine, status: str, hours_ago: int, task: str = "check_order_risk"
) -> int:
    """A job in `status` whose latest event is `hours_ago` old."""
    async with owner_engine.begin() as conn:
        job_id = await conn.scalar(
            text(
                "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)"
                " VALUES ('risk', :task, '{}', CAST(:status AS procrastinate_job_status))"
                " RETURNING id"
            ),
            {"task": task, "status": status},
        )
        await conn.execute(
            text(
                "INSERT INTO procrastinate_events (job_id, type, at)"
                " VALUES (:id, 'deferred', now() - make_interval(hours => :h + 1)),"
                " (:id, 'started', now() - make_interval(hours => :h + 1))"
            ),
            {"h": hours_ago, "id": job_id},
        )
        if status != "todo":
            await conn.execute(
                text(
                    "INSERT INTO procrastinate_events (job_id, type, at) VALUES"
                    " (:id, CAST(:status AS procrastinate_job_event_type),"
                    " now() - make_interval(hours => :h))"
                ),
                {"h": hours_ago, "id": job_id, "status": status},
            )
    assert isinstance(job_id, int)
    return job_id


async def jobs_left(owner_engine: AsyncEngine) -> set[int]:
    async with owner_engine.connect() as conn:
        return set((await conn.execute(text("SELECT id FROM procrastinate_jobs"))).scalars())


async def test_finished_jobs_go_after_their_retention_and_failed_ones_later(
    app: FastAPI, owner_engine: AsyncEngine
) -> None:
    old_success = await job_finished(owner_engine, "succeeded", hours_ago=73)
    recent_success = await job_finished(owner_engine, "succeeded", hours_ago=71)
    failed_in_retention = await job_finished(owner_engine, "failed", hours_ago=100)
    old_failure = await job_finished(owner_engine, "failed", hours_ago=721)
    waiting = await job_finished(owner_engine, "todo", hours_ago=1000)
    removal = await recovery.remove_finished_jobs(
        app.state.db, succeeded_hours=72, failed_hours=720
    )
    assert removal.jobs == 2 and removal.done
    assert await jobs_left(owner_engine) == {recent_success, failed_in_retention, waiting}
    assert old_success not in await jobs_left(owner_engine)
    async with owner_engine.connect() as conn:
        orphans = await conn.scalar(
            text("SELECT count(*) FROM procrastinate_events WHERE job_id = ANY(:ids)"),
            {"ids": [old_success, old_failure]},
        )
    assert orphans == 0  # their events went with them


async def test_finished_jobs_go_in_batches_up_to_the_round_limit(
    app: FastAPI, owner_engine: AsyncEngine
) -> None:
    old = [await job_finished(owner_engine, "succeeded", hours_ago=100) for _ in range(25)]
    recent = await job_finished(owner_engine, "succeeded", hours_ago=1)
    first = await recovery.remove_finished_jobs(
        app.state.db, succeeded_hours=72, failed_hours=720, batch=10, round_limit=20
    )
    assert first == recovery.Removal(jobs=20, batches=2, done=False)
    second = await recovery.remove_finished_jobs(
        app.state.db, succeeded_hours=72, failed_hours=720, batch=10, round_limit=20
    )
    assert second == recovery.Removal(jobs=5, batches=1, done=True)
    assert await jobs_left(owner_engine) == {recent}
    assert len(old) == 25


def test_the_worker_schedules_the_removal_of_finished_jobs() -> None:
    scheduled = {
        task.task.name: task.cron
        for task in procrastinate_app.periodic_registry.periodic_tasks.values()
    }
    assert scheduled[tasks.REMOVE_FINISHED_JOBS] == tasks.EVERY_TEN_MINUTES
