"""Our statements on procrastinate's tables (procrastinate_jobs, procrastinate_events),
with their typed rows: deferring a job in the caller's transaction (jobs.defer), the risk
sweep's re-deferrals and retries, and removing finished jobs (jobs.recovery).
procrastinate's own statements (the worker's fetching, retrying, heartbeats) stay its own."""

from __future__ import annotations

from dataclasses import dataclass

from tradeops.db.prepared import Id, query

DEFER_JOB = query(
    "SELECT (procrastinate_defer_jobs_v1(ARRAY[ROW("
    " CAST(:queue AS varchar), CAST(:task_name AS varchar), CAST(:priority AS integer),"
    " CAST(:lock AS text), CAST(:queueing_lock AS text), CAST(:args AS jsonb),"
    " CAST(NULL AS timestamptz))::procrastinate_job_to_defer_v1]))[1] AS id",
    Id,
)


@dataclass(frozen=True, slots=True)
class OrderJob:
    """A risk check the sweeper queued (or put back) for an order."""

    order_id: int
    job_id: int


@dataclass(frozen=True, slots=True)
class RetriedJob(OrderJob):
    retried: None  # procrastinate_retry_job_v2 returns void


# The check again for each listed order that has no job queued or running for it (its
# lock, order:<id>, is the one submit_order gives it; idx_procrastinate_jobs_id_lock serves
# the lookup). Same lock, so it never runs beside another check of the order; the queueing
# lock keeps a second sweeper from queueing it twice even without the sweep's advisory lock
# (jobs/recovery.py).
DEFER_MISSING_RISK_CHECKS = query(
    "SELECT o.id AS order_id, (procrastinate_defer_jobs_v1(ARRAY[ROW("
    " CAST(:queue AS varchar), CAST(:task_name AS varchar), 0, 'order:' || o.id,"
    " 'risk-sweep:' || o.id, jsonb_build_object('order_id', o.id),"
    " CAST(NULL AS timestamptz))::procrastinate_job_to_defer_v1]))[1] AS job_id"
    " FROM unnest(CAST(:order_ids AS bigint[])) AS o(id)"
    " WHERE NOT EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.lock = 'order:' || o.id"
    "  AND j.status IN ('todo', 'doing'))"
    " ORDER BY o.id",
    OrderJob,
)

# The check of a listed order still `doing` long after it started: back to the queue, as
# procrastinate retries a job (doing -> todo, one more attempt). Locked first, so a job that
# finishes meanwhile is skipped rather than failing the statement.
RETRY_OVERDUE_RISK_CHECKS = query(
    "WITH overdue AS MATERIALIZED ("
    " SELECT j.id, j.args FROM procrastinate_jobs j"
    " WHERE j.status = 'doing' AND j.task_name = CAST(:task_name AS varchar)"
    " AND j.lock IN (SELECT 'order:' || id FROM unnest(CAST(:order_ids AS bigint[])) AS o(id))"
    " AND NOT EXISTS (SELECT 1 FROM procrastinate_events e WHERE e.job_id = j.id"
    "  AND e.type = 'started' AND e.at > now() - make_interval(secs => :overdue_seconds))"
    " ORDER BY j.id FOR UPDATE OF j SKIP LOCKED)"
    " SELECT CAST(args->>'order_id' AS bigint) AS order_id, id AS job_id,"
    " procrastinate_retry_job_v2(id, now(), NULL, NULL, NULL) AS retried FROM overdue",
    RetriedJob,
)

# The periodic tasks leave a succeeded job every few seconds: nothing to keep (their effects
# are logged), so they go; a failed one stays for people to look at.
PRUNE_SUCCEEDED_HOUSEKEEPING = query(
    "DELETE FROM procrastinate_jobs WHERE queue_name = :queue AND status = 'succeeded'"
    " RETURNING id",
    Id,
)


@dataclass(frozen=True, slots=True)
class FinishedJobsBatch:
    """One batch of remove_finished_jobs: jobs looked at, the last one's id, jobs deleted."""

    scanned: int
    last_id: int | None
    removed: int


# One batch of finished jobs, in id order after :after (a keyset over the primary key), of which
# those finished longer ago than their retention go, their events with them (ON DELETE
# CASCADE). A job's finish is its latest event; a failed, cancelled or aborted one is kept
# longer than a succeeded one. SKIP LOCKED: two workers running this never wait for each other.
# procrastinate's builtin remove_old_jobs is not used: it is one DELETE over every job joined
# with every event (DISTINCT ON), the unbounded statement this replaces for idempotency keys.
REMOVE_FINISHED_JOBS_BATCH = query(
    "WITH scanned AS MATERIALIZED ("
    " SELECT id, status FROM procrastinate_jobs"
    " WHERE id > :after AND status IN ('succeeded', 'failed', 'cancelled', 'aborted')"
    " ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED),"
    " removed AS (DELETE FROM procrastinate_jobs j USING scanned s WHERE j.id = s.id"
    "  AND NOT EXISTS (SELECT 1 FROM procrastinate_events e WHERE e.job_id = s.id"
    "   AND e.at >= now() - make_interval(hours => CASE s.status WHEN 'succeeded'"
    "    THEN CAST(:succeeded_hours AS integer) ELSE CAST(:failed_hours AS integer) END))"
    "  RETURNING j.id)"
    " SELECT (SELECT count(*) FROM scanned) AS scanned, (SELECT max(id) FROM scanned) AS last_id,"
    " (SELECT count(*) FROM removed) AS removed",
    FinishedJobsBatch,
)
