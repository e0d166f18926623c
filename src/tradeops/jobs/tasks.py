"""The tasks. Each is idempotent: running a job twice has the effect of running it once.

check_order_risk runs the pre-trade rules (tradeops.risk) for one order. It is deferred by
submit_order in the order's own transaction, so every committed order has its check, and no
rolled-back order has one. Transient database errors are retried with backoff; when a check
cannot run at all, the order is marked FAILED with a RISK_CHECK_ERROR event, never left
silently unchecked.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import psycopg
import structlog
from procrastinate import JobContext, RetryStrategy

from tradeops.auth.principal import SYSTEM
from tradeops.db.pool import Database
from tradeops.db.uow import run_in_transaction
from tradeops.jobs.app import app
from tradeops.jobs.defer import CHECK_ORDER_RISK, RISK_QUEUE
from tradeops.risk import service as risk
from tradeops.settings import Settings

log = structlog.get_logger(component="tradeops.jobs")

# Transient: the database went away or refused us for a moment. Waits 2, 4, 8, 16 s.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    asyncpg.PostgresConnectionError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.TooManyConnectionsError,
    ConnectionError,
    TimeoutError,
)
RETRY = RetryStrategy(max_attempts=5, exponential_wait=2, retry_exceptions=TRANSIENT_ERRORS)


def _database(context: JobContext) -> Database:
    db: Database = context.additional_context["db"]
    return db


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
            except Exception:
                log.exception("job_failure_not_recorded", job_id=job.id, task=job.task_name)
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
    settings: Settings = context.additional_context["settings"]
    await run_in_transaction(
        _database(context),
        SYSTEM,
        lambda uow: risk.check_order(uow, order_id, default_fat_finger_pct=settings.fat_finger_pct),
        request_id=_job_request_id(context),
    )
