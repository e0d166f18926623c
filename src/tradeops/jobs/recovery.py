"""Recovery: no job lost with a crashed worker, no order left waiting for its risk check.

Two periodic tasks (tasks.py) call these, from every worker; each is safe to run twice at once:
- `retry_stalled_jobs`: jobs `doing` on a worker that stopped heartbeating (killed, its
  machine gone) go back to `todo`. procrastinate moves a job only if it is still `doing`,
  so of two workers retrying the same job one does it and the other is told it is gone.
- `resume_pending_risk_checks`: the backstop. An order still awaiting its check well after
  it was submitted, with no check queued or running (its job failed, was deleted, or never
  ran), gets its check deferred again, under an advisory lock so two sweepers never defer
  the same check twice. A check `doing` for far longer than any check takes (its worker
  lost the database while finishing it, and heartbeats on) is put back in the queue.

And one that keeps the queue's tables from growing forever: `remove_finished_jobs` deletes
jobs finished longer ago than their retention, in short batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from procrastinate import exceptions
from procrastinate.manager import JobManager

from tradeops.auth.principal import SYSTEM
from tradeops.db.locks import lock
from tradeops.db.pool import Database
from tradeops.db.uow import UnitOfWork, run_in_transaction, transaction
from tradeops.jobs.defer import CHECK_ORDER_RISK, HOUSEKEEPING_QUEUE, RISK_QUEUE
from tradeops.jobs.repository import (
    DEFER_MISSING_RISK_CHECKS,
    PRUNE_SUCCEEDED_HOUSEKEEPING,
    REMOVE_FINISHED_JOBS_BATCH,
    RETRY_OVERDUE_RISK_CHECKS,
)
from tradeops.risk import repository as risk_repo
from tradeops.settings import Settings

log = structlog.get_logger(component="tradeops.jobs")

NOT_DOING = "P0001"  # procrastinate_retry_job: 'Job was not found or not in "doing" status'


async def retry_stalled_jobs(job_manager: JobManager, stalled_seconds: float) -> list[int]:
    """Put back in the queue every job running on a worker silent for `stalled_seconds`;
    the ids of those this call moved."""
    stalled = await job_manager.get_stalled_jobs(seconds_since_heartbeat=stalled_seconds)
    retried: list[int] = []
    for job in stalled:
        assert job.id is not None  # a job read from the table
        try:
            await job_manager.retry_job(job)
        except exceptions.ConnectorException as error:
            if getattr(error.__cause__, "sqlstate", None) != NOT_DOING:
                raise
            continue  # another worker retried it first, or it finished meanwhile
        retried.append(job.id)
        log.warning(
            "stalled_job_retried",
            job_id=job.id,
            task=job.task_name,
            args=job.task_kwargs,
            worker_id=job.worker_id,
        )
    return retried


async def _orders_awaiting_check(uow: UnitOfWork, settings: Settings) -> list[int]:
    rows = await uow.rows(
        risk_repo.AWAITING_CHECK,
        {
            "older_than_seconds": settings.risk_sweep_after_seconds,
            "limit": settings.risk_sweep_batch,
        },
    )
    return [row.id for row in rows]


async def resume_pending_risk_checks(
    db: Database, settings: Settings, request_id: str | None = None
) -> list[int]:
    """Defer the check again for orders awaiting it longer than risk_sweep_after_seconds with
    no check queued or running, and put back in the queue a check running for longer than
    risk_check_overdue_seconds; the ids of those orders.

    The orders are read as the system, through row-level security, like every job's reads;
    the queue is procrastinate's and is written as the worker's own role, as procrastinate
    itself does."""
    awaiting = await run_in_transaction(
        db, SYSTEM, lambda uow: _orders_awaiting_check(uow, settings), request_id=request_id
    )
    if not awaiting:
        return []
    async with transaction(db) as uow:
        # One sweeper at a time, across workers: held to the end of this transaction, so the
        # next one sees the jobs this one deferred.
        await lock(uow, "tradeops.risk_sweep")
        overdue = await uow.rows(
            RETRY_OVERDUE_RISK_CHECKS,
            {
                "order_ids": awaiting,
                "task_name": CHECK_ORDER_RISK,
                "overdue_seconds": settings.risk_check_overdue_seconds,
            },
        )
        deferred = await uow.rows(
            DEFER_MISSING_RISK_CHECKS,
            {"order_ids": awaiting, "queue": RISK_QUEUE, "task_name": CHECK_ORDER_RISK},
        )
    for row in overdue:
        log.warning("overdue_risk_check_retried", order_id=row.order_id, job_id=row.job_id)
    for resumed in deferred:
        log.warning("risk_check_resumed", order_id=resumed.order_id, job_id=resumed.job_id)
    return sorted(row.order_id for row in [*overdue, *deferred])


async def prune_succeeded_housekeeping(db: Database, queue: str = HOUSEKEEPING_QUEUE) -> int:
    """Delete the succeeded runs of the periodic tasks (of `queue`); how many."""
    async with transaction(db) as uow:
        pruned = await uow.rows(PRUNE_SUCCEEDED_HOUSEKEEPING, {"queue": queue})
    return len(pruned)


@dataclass(frozen=True, slots=True)
class Removal:
    """What one run of remove_finished_jobs did: `jobs` deleted in `batches` transactions;
    `done` when it reached jobs still within their retention (or the end of the table), else it
    stopped at its limit and the next run goes on."""

    jobs: int
    batches: int
    done: bool


async def remove_finished_jobs(
    db: Database,
    *,
    succeeded_hours: int,
    failed_hours: int,
    batch: int = 1000,
    round_limit: int = 100_000,
) -> Removal:
    """Delete finished jobs (and their events) older than their retention: succeeded ones after
    `succeeded_hours`, failed, cancelled and aborted ones after `failed_hours`. Oldest first,
    `batch` jobs looked at per short transaction; it stops at the first batch with nothing old
    enough (jobs finish in about the order they were deferred, so the rest are newer) or after
    `round_limit` jobs, so no run grows with the table."""
    retention = {"succeeded_hours": succeeded_hours, "failed_hours": failed_hours}
    after, removed, batches = 0, 0, 0
    while removed < round_limit:
        size = min(batch, round_limit - removed)
        async with transaction(db) as uow:
            outcome = await uow.row(
                REMOVE_FINISHED_JOBS_BATCH, retention | {"after": after, "batch": size}
            )
        assert outcome is not None  # aggregates without GROUP BY answer one row
        batches, removed = batches + 1, removed + outcome.removed
        if outcome.scanned < size or outcome.removed == 0 or outcome.last_id is None:
            return Removal(jobs=removed, batches=batches, done=True)
        after = outcome.last_id
    return Removal(jobs=removed, batches=batches, done=False)
