"""The tasks. Each is idempotent: running a job twice has the effect of running it once.

check_order_risk runs the pre-trade rules (tradeops.risk) for one order. It is deferred by
submit_order in the order's own transaction, so every committed order has its check, and no
rolled-back order has one. Transient database errors (db.transient) are retried with
backoff; when a check cannot run at all, the order is marked FAILED with a RISK_CHECK_ERROR
event, never left silently unchecked, and when even that cannot be written the job is retried.

Two periodic tasks keep that promise when a worker dies (recovery.py): jobs of a worker that
stopped heartbeating are retried, and orders still awaiting their check with no job for it
get it deferred again. A third removes finished jobs once their retention has passed, and a
fourth expires open orders whose time has passed (orders/expiry.py).
"""

from __future__ import annotations

from typing import Any

import structlog
from procrastinate import JobContext
from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy, RetryDecision

from tradeops.auth.principal import SYSTEM
from tradeops.db.pool import Database
from tradeops.db.transient import is_transient
from tradeops.db.uow import run_in_transaction
from tradeops.jobs import recovery
from tradeops.jobs.defer import (
    CHECK_ORDER_RISK,
    DELIVER_WEBHOOKS,
    HOUSEKEEPING_QUEUE,
    RISK_QUEUE,
    SWEEP_WEBHOOKS,
    WEBHOOKS_QUEUE,
)
from tradeops.jobs.registry import app
from tradeops.orders import expiry
from tradeops.risk import service as risk
from tradeops.settings import Settings
from tradeops.webhooks import service as webhooks

log = structlog.get_logger(component="tradeops.jobs")

RETRY_STALLED_JOBS = "retry_stalled_jobs"
RESUME_PENDING_RISK_CHECKS = "resume_pending_risk_checks"
REMOVE_FINISHED_JOBS = "remove_finished_jobs"
EXPIRE_ORDERS = "expire_orders"
# Every 10 s (croniter's sixth field is the second): with the default 20 s stall timeout a
# crashed worker's jobs are back in the queue within ~30 s.
EVERY_TEN_SECONDS = "* * * * * */10"
EVERY_FIFTEEN_SECONDS = "* * * * * */15"
EVERY_THIRTY_SECONDS = "* * * * * */30"
EVERY_TEN_MINUTES = "*/10 * * * *"
# Webhook retries come due on their own schedule; a nudge from the outbox trigger brings
# new deliveries at once, so this sweep bounds only the wait of retries and missed nudges.
EVERY_TWO_SECONDS = "* * * * * */2"
# Ahead of any backlog of checks: recovery must not wait behind the work it recovers.
HOUSEKEEPING_PRIORITY = 10


class FailureNotRecorded(Exception):
    """A job gave up, and writing that down on the order failed too (the database is away):
    the job is retried instead, so the order is never left awaiting a check nobody runs."""


class TransientRetry(BaseRetryStrategy):
    """Transient errors (db.transient) retried after 2, 4, 8, 16 s, then the job gives up;
    a give-up that could not be recorded is retried until it can be (at most a minute apart)."""

    max_attempts = 5

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, FailureNotRecorded):
            return RetryDecision(retry_in={"seconds": min(60, 2 ** min(job.attempts + 1, 6))})
        if job.attempts + 1 >= self.max_attempts or not is_transient(exception):
            return None
        return RetryDecision(retry_in={"seconds": 2 ** (job.attempts + 1)})


RETRY = TransientRetry()


def _database(context: JobContext) -> Database:
    db: Database = context.additional_context["db"]
    return db


def _settings(context: JobContext) -> Settings:
    settings: Settings = context.additional_context["settings"]
    return settings


def _job_request_id(context: JobContext) -> str:
    """What the audit trail records as the request: the job that made the change."""
    return f"job-{context.job.id}"


async def _on_final_failure(context: JobContext, error: Exception) -> None:
    """What a task that gave up leaves behind for people to see, besides the log line."""
    job = context.job
    if job.task_name != CHECK_ORDER_RISK:
        return
    order_id = job.task_kwargs.get("order_id")
    if not isinstance(order_id, int):
        return  # a malformed job names no order; the log line is all there is to show
    await run_in_transaction(
        _database(context),
        SYSTEM,
        lambda uow: risk.record_check_error(uow, order_id, type(error).__name__),
        request_id=_job_request_id(context),
    )


async def report_failures(call_next: Any, context: JobContext, worker: Any) -> Any:
    """Never silent: every failed attempt is logged, a final one (no retry left) as an error
    and recorded on the order it was for."""
    try:
        return await call_next()
    except Exception as error:
        job = context.job
        will_retry = RETRY.get_retry_decision(exception=error, job=job) is not None
        (log.warning if will_retry else log.error)(
            "job_failed",
            job_id=job.id,
            task=job.task_name,
            args=job.task_kwargs,
            attempt=job.attempts + 1,
            will_retry=will_retry,
            error=f"{type(error).__name__}: {error}",
        )
        if not will_retry:
            try:
                await _on_final_failure(context, error)
            except Exception as unrecorded:
                log.exception("job_failure_not_recorded", job_id=job.id, task=job.task_name)
                raise FailureNotRecorded(f"{type(error).__name__}, not recorded") from unrecorded
        raise


@app.task(
    name=CHECK_ORDER_RISK,
    queue=RISK_QUEUE,
    retry=RETRY,
    pass_context=True,
    task_middleware=[report_failures],
)
async def check_order_risk(context: JobContext, order_id: int) -> None:
    """The pre-trade risk check of one order: PASSED or FAILED with reasons, once."""
    settings = _settings(context)
    await run_in_transaction(
        _database(context),
        SYSTEM,
        lambda uow: risk.check_order(uow, order_id, default_fat_finger_pct=settings.fat_finger_pct),
        request_id=_job_request_id(context),
    )


@app.periodic(cron=EVERY_TEN_SECONDS, periodic_id=RETRY_STALLED_JOBS)
@app.task(
    name=RETRY_STALLED_JOBS,
    queue=HOUSEKEEPING_QUEUE,
    priority=HOUSEKEEPING_PRIORITY,
    queueing_lock=RETRY_STALLED_JOBS,  # never two queued: a backlog of them is pointless
    pass_context=True,
)
async def retry_stalled_jobs(context: JobContext, timestamp: int) -> int:
    """Jobs left `doing` by a worker that stopped heartbeating go back to the queue."""
    stalled = _settings(context).worker_stalled_seconds
    return len(await recovery.retry_stalled_jobs(context.app.job_manager, stalled))


@app.periodic(cron=EVERY_FIFTEEN_SECONDS, periodic_id=RESUME_PENDING_RISK_CHECKS)
@app.task(
    name=RESUME_PENDING_RISK_CHECKS,
    queue=HOUSEKEEPING_QUEUE,
    priority=HOUSEKEEPING_PRIORITY,
    queueing_lock=RESUME_PENDING_RISK_CHECKS,
    pass_context=True,
)
async def resume_pending_risk_checks(context: JobContext, timestamp: int) -> int:
    """Orders awaiting their risk check with no job for it get the check deferred again."""
    db = _database(context)
    resumed = await recovery.resume_pending_risk_checks(
        db, _settings(context), request_id=_job_request_id(context)
    )
    await recovery.prune_succeeded_housekeeping(db)
    return len(resumed)


@app.periodic(cron=EVERY_THIRTY_SECONDS, periodic_id=EXPIRE_ORDERS)
@app.task(
    name=EXPIRE_ORDERS,
    queue=HOUSEKEEPING_QUEUE,
    priority=HOUSEKEEPING_PRIORITY,
    queueing_lock=EXPIRE_ORDERS,
    retry=RETRY,
    pass_context=True,
)
async def expire_orders(context: JobContext, timestamp: int) -> int:
    """Open orders whose time has passed become EXPIRED (tradeops.orders.expiry); safe beside
    another worker's sweep (each batch skips the orders another holds)."""
    expired = await expiry.expire_due_orders(
        _database(context),
        _settings(context).expiry_batch,
        request_id=_job_request_id(context),
    )
    if expired:
        log.info("orders_expired", count=len(expired), first=expired[0], last=expired[-1])
    return len(expired)


@app.periodic(cron=EVERY_TEN_MINUTES, periodic_id=REMOVE_FINISHED_JOBS)
@app.task(
    name=REMOVE_FINISHED_JOBS,
    queue=HOUSEKEEPING_QUEUE,
    # Not ahead of the checks (as the recovery tasks are): nothing waits on it.
    queueing_lock=REMOVE_FINISHED_JOBS,
    pass_context=True,
)
async def remove_finished_jobs(context: JobContext, timestamp: int) -> int:
    """Jobs finished longer ago than TRADEOPS_JOB_RETENTION_HOURS (failed ones:
    TRADEOPS_JOB_FAILED_RETENTION_HOURS) are deleted with their events, in short batches."""
    settings = _settings(context)
    removal = await recovery.remove_finished_jobs(
        _database(context),
        succeeded_hours=settings.job_retention_hours,
        failed_hours=settings.job_failed_retention_hours,
        batch=settings.purge_batch,
        round_limit=settings.purge_round_limit,
    )
    if removal.jobs:
        log.info(
            "finished_jobs_removed",
            jobs=removal.jobs,
            batches=removal.batches,
            done=removal.done,
        )
    return removal.jobs


@app.task(
    name=DELIVER_WEBHOOKS, queue=WEBHOOKS_QUEUE, queueing_lock=DELIVER_WEBHOOKS, pass_context=True
)
async def deliver_webhooks(context: JobContext) -> int:
    """Deliveries written by the outbox trigger, sent as soon as their transaction commits
    (the trigger defers this job, at most one queued)."""
    return await webhooks.deliver_due(_database(context), _settings(context))


@app.periodic(cron=EVERY_TWO_SECONDS, periodic_id=SWEEP_WEBHOOKS)
@app.task(
    name=SWEEP_WEBHOOKS, queue=WEBHOOKS_QUEUE, queueing_lock=SWEEP_WEBHOOKS, pass_context=True
)
async def sweep_webhooks(context: JobContext, timestamp: int) -> int:
    """Retries that came due, and anything a nudge missed; the succeeded runs of both tasks
    are deleted (nothing to keep: every attempt is in webhook_attempts)."""
    db = _database(context)
    sent = await webhooks.deliver_due(db, _settings(context))
    await recovery.prune_succeeded_housekeeping(db, WEBHOOKS_QUEUE)
    return sent
