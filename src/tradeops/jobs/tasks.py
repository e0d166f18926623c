"""The tasks. Each is idempotent: running a job twice has the effect of running it once.

check_order_risk is a placeholder for the pre-trade risk rules, which come later: today it
only records (in the log) that the check ran for the order. It is deferred by submit_order
in the order's own transaction, so every committed order has its check, and no rolled-back
order has one.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import psycopg
import structlog
from procrastinate import JobContext, RetryStrategy

from tradeops.jobs.app import app
from tradeops.jobs.defer import CHECK_ORDER_RISK, RISK_QUEUE

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


async def report_failures(call_next: Any, context: JobContext, worker: Any) -> Any:
    """Never silent: every failed attempt is logged, a final one (no retry left) as an error."""
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
        raise


@app.task(
    name=CHECK_ORDER_RISK,
    queue=RISK_QUEUE,
    retry=RETRY,
    pass_context=True,
    task_middleware=[report_failures],
)
async def check_order_risk(context: JobContext, order_id: int) -> None:
    """Placeholder for the pre-trade risk rules: records that the check ran, changes nothing."""
    log.info("risk_check_ran", order_id=order_id, job_id=context.job.id, rules="none yet")
