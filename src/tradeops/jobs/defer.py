"""Deferring a job inside the caller's transaction: it exists if and only if the change does.

The statements on procrastinate's tables are jobs/repository.py's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from tradeops.db.uow import UnitOfWork, Wakeup
from tradeops.jobs.repository import DEFER_JOB

# Task names and queues, shared by the callers (which defer) and the worker (which runs).
CHECK_ORDER_RISK = "check_order_risk"
RISK_QUEUE = "risk"
HOUSEKEEPING_QUEUE = "housekeeping"  # the periodic recovery tasks (tasks.py)
# Webhook deliveries: the outbox trigger of migration 0012 defers DELIVER_WEBHOOKS on this
# queue (the names are written there too), with DELIVER_WEBHOOKS as its queueing lock.
WEBHOOKS_QUEUE = "webhooks"
DELIVER_WEBHOOKS = "deliver_webhooks"
SWEEP_WEBHOOKS = "sweep_webhooks"


async def defer_job(
    uow: UnitOfWork,
    task_name: str,
    queue: str,
    args: Mapping[str, Any],
    lock: str | None = None,
    queueing_lock: str | None = None,
    priority: int = 0,
) -> int:
    """Insert a job in the unit of work's transaction (committed or rolled back with it)."""
    job = await uow.row(
        DEFER_JOB,
        {
            "queue": queue,
            "task_name": task_name,
            "priority": priority,
            "lock": lock,
            "queueing_lock": queueing_lock,
            "args": orjson.dumps(dict(args)).decode(),
        },
    )
    assert job is not None  # procrastinate answers the new job's id
    return job.id


def job_wakeups(queue: str, job_id: int) -> list[Wakeup]:
    """The wake-ups of a new job whose writer sends them after the commit (db/wakeups.py):
    what procrastinate's trigger sends, on the queue's channel and on every queue's (a
    worker listens on one or the other)."""
    payload = orjson.dumps({"type": "job_inserted", "job_id": job_id}).decode()
    return [(f"procrastinate_queue_v1#{queue}", payload), ("procrastinate_any_queue_v1", payload)]
