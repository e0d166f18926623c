"""Issue 12.1: no risk check stuck forever. A killed worker's jobs resume, every
connection-level error is retried, a give-up that cannot be written down is retried, and a
sweeper re-defers the check of any order left awaiting it with no job."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import asyncpg.exceptions._base as asyncpg_base
import httpx
import psycopg
import psycopg.errors
import pytest
from fastapi import FastAPI
from procrastinate import exceptions as procrastinate_errors
from procrastinate.jobs import Job
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import SEED_ORDER, Cast
from tradeops.db.pool import PoolTimeout
from tradeops.db.transient import is_transient
from tradeops.jobs import recovery, tasks
from tradeops.jobs.app import connector_for, run_worker
from tradeops.jobs.registry import app as procrastinate_app
from tradeops.jobs.tasks import RETRY, FailureNotRecorded
from tradeops.settings import Settings

ORDERS = "/api/v1/orders"


def a_job(attempts: int = 0) -> Job:
    return Job(id=1, queue="risk", lock=None, queueing_lock=None, task_name="t", attempts=attempts)


async def submit(client: httpx.AsyncClient, cast: Cast) -> int:
    response = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def risk_jobs(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT id, status::text AS status, attempts, lock, args"
                " FROM procrastinate_jobs WHERE task_name = 'check_order_risk' ORDER BY id"
            )
        )
        return list(result.all())


async def risk_status(engine: AsyncEngine, order_id: int) -> str:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT risk_status FROM orders WHERE id = :id"), {"id": order_id}
        )
    return str(found)


async def owner_sql(engine: AsyncEngine, statement: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(statement), params)


# --- (a) a real fault: kill -9 a worker process in the middle of a risk check ----------


def start_worker(database_url: str, home: Path, **settings: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TRADEOPS_DATABASE_URL": database_url,
        "TRADEOPS_ENV": "test",
        "TRADEOPS_LOG_FORMAT": "json",
        **{f"TRADEOPS_{name.upper()}": value for name, value in settings.items()},
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tradeops.cli", "worker"],
        env=env,
        cwd=home,  # no .env file of the developer's
        stdout=(home / "worker.log").open("ab"),
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """End a worker this test started (by its pid), politely first."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        stop(process)


async def wait_for(condition: Any, timeout: float, what: str) -> float:
    """Poll `condition` (an async callable) until true; the seconds it took."""
    began = time.monotonic()
    while not await condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.2)
    return time.monotonic() - began


async def test_a_killed_workers_risk_check_finishes_on_a_new_worker(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    database_url: str,
    tmp_path: Path,
    workers: list[subprocess.Popen[bytes]],
) -> None:
    order_id = await submit(client, cast)
    fast = {
        "worker_heartbeat_seconds": "1",
        "worker_stalled_seconds": "3",
        # The check waits for the row as long as the test holds it, and only the stalled-job
        # retry (not the sweeper) may bring it back.
        "statement_timeout_ms": "120000",
        "risk_sweep_after_seconds": "3600",
    }
    holder = await psycopg.AsyncConnection.connect(database_url)
    try:
        await holder.execute("SELECT id FROM orders WHERE id = %s FOR UPDATE", (order_id,))
        first = start_worker(database_url, tmp_path, **fast)
        workers.append(first)

        async def check_is_stuck_on_the_row() -> bool:
            async with owner_engine.connect() as conn:
                waiting = await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name = 'tradeops' AND wait_event_type = 'Lock'"
                    )
                )
            [job] = await risk_jobs(owner_engine)
            return job.status == "doing" and waiting == 1

        await wait_for(check_is_stuck_on_the_row, 60, "the first worker starts the check")
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
    finally:
        await holder.rollback()
        await holder.close()
    [job] = await risk_jobs(owner_engine)
    assert job.status == "doing"  # what the issue saw: the dead worker's job, left running

    workers.append(start_worker(database_url, tmp_path, **fast))

    async def checked() -> bool:
        [job] = await risk_jobs(owner_engine)
        done = await risk_status(owner_engine, order_id) in ("PASSED", "FAILED")
        return done and job.status == "succeeded"

    took = await wait_for(checked, 60, "the risk check finishes on the new worker")
    print(f"risk check resumed {took:.1f} s after the new worker started")
    [job] = await risk_jobs(owner_engine)
    # The same job: one attempt counted by the retry of the dead worker's run, one by its run.
    assert (job.status, job.attempts) == ("succeeded", 2)


# --- (b) every connection-level error is transient, a bug is not ----------------------------


CONNECTION_LEVEL_ERRORS: list[BaseException] = [
    asyncpg.InterfaceError("cannot call Connection.fetch(): the underlying connection is closed"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of it"),
    asyncpg.InternalClientError("protocol in an unexpected state"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.CrashShutdownError("terminating connection because of crash"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.ConnectionFailureError("connection failure"),
    asyncpg.exceptions.ClientCannotConnectError("cannot connect"),
    asyncpg.TooManyConnectionsError("too many clients"),
    psycopg.OperationalError("consuming input failed: server closed the connection"),
    psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    psycopg.errors.CrashShutdown("crash"),
    psycopg.errors.CannotConnectNow("starting up"),
    psycopg.errors.ConnectionException("08000"),
    psycopg.errors.ConnectionFailure("08006"),
    psycopg.errors.SqlclientUnableToEstablishSqlconnection("08001"),
    asyncpg.SerializationError("could not serialize access"),
    asyncpg.DeadlockDetectedError("deadlock detected"),
    PoolTimeout("no database connection became free in time"),
    ConnectionResetError("reset by peer"),
]


def wrapped(error: BaseException) -> BaseException:
    """As procrastinate's connector raises it: its own exception, from psycopg's."""
    try:
        raise procrastinate_errors.ConnectorException() from error
    except procrastinate_errors.ConnectorException as outer:
        return outer


@pytest.mark.parametrize("error", CONNECTION_LEVEL_ERRORS, ids=lambda e: type(e).__name__)
def test_every_connection_level_error_is_transient_and_retried(error: BaseException) -> None:
    assert is_transient(error)
    assert is_transient(wrapped(error))
    assert RETRY.get_retry_decision(exception=error, job=a_job()) is not None


@pytest.mark.parametrize(
    "error",
    [
        TypeError("bug"),
        RuntimeError("rules engine crashed"),
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.CheckViolationError("check"),
        asyncpg_base.DataError("invalid input for query argument $1"),  # an InterfaceError
        psycopg.errors.UniqueViolation("duplicate key"),
        asyncpg.InsufficientPrivilegeError("permission denied"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_bug_or_bad_data_is_not_transient(error: BaseException) -> None:
    assert not is_transient(error)
    assert RETRY.get_retry_decision(exception=error, job=a_job()) is None


async def test_errors_raised_by_real_lost_connections_are_transient(database_url: str) -> None:
    """Not only the classes: what the drivers actually raise when the server ends a session."""
    connection = await asyncpg.connect(database_url)
    with pytest.raises(Exception) as terminated:
        await connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    with pytest.raises(asyncpg.InterfaceError) as closed:
        await connection.fetch("SELECT 1")  # "…the underlying connection is closed"
    assert is_transient(terminated.value), repr(terminated.value)
    assert is_transient(closed.value), repr(closed.value)

    sync = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    with pytest.raises(psycopg.OperationalError) as admin_shutdown:
        await sync.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    with pytest.raises(psycopg.OperationalError) as gone:
        await sync.execute("SELECT 1")
    assert is_transient(admin_shutdown.value) and is_transient(gone.value)
    await sync.close()


def test_transient_errors_give_up_after_five_attempts() -> None:
    error = asyncpg.InterfaceError("the underlying connection is closed")
    waits = [RETRY.get_retry_decision(exception=error, job=a_job(n)) for n in range(5)]
    assert [w is not None for w in waits] == [True, True, True, True, False]


def test_a_give_up_that_was_not_recorded_is_always_retried() -> None:
    for attempts in (0, 4, 5, 50):
        decision = RETRY.get_retry_decision(exception=FailureNotRecorded("x"), job=a_job(attempts))
        assert decision is not None, attempts


async def test_when_the_failure_cannot_be_recorded_the_job_is_retried_not_failed(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken_rules(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug: not transient")

    async def database_gone(*args: Any, **kwargs: Any) -> None:
        raise asyncpg.InterfaceError("cannot call Connection.fetchrow(): connection is closed")

    order_id = await submit(client, cast)
    monkeypatch.setattr(tasks.risk, "check_order", broken_rules)
    monkeypatch.setattr(tasks.risk, "record_check_error", database_gone)
    await run_worker(database_url, wait=False, install_signal_handlers=False)

    [job] = await risk_jobs(owner_engine)
    assert (job.status, job.attempts) == ("todo", 1)  # retried later, never `failed`
    assert await risk_status(owner_engine, order_id) == "PENDING"

    monkeypatch.undo()  # the database is back: the retry records the result
    await owner_sql(owner_engine, "UPDATE procrastinate_jobs SET scheduled_at = now()")
    await run_worker(database_url, wait=False, install_signal_handlers=False)
    assert await risk_status(owner_engine, order_id) in ("PASSED", "FAILED")


# --- stalled jobs ------------------------------------------------------------------------


async def test_a_dead_workers_job_is_retried_once_even_by_two_retriers_at_once(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, database_url: str
) -> None:
    order_id = await submit(client, cast)
    # A worker that last heartbeat a minute ago, running the order's check.
    await owner_sql(
        owner_engine,
        "WITH w AS (INSERT INTO procrastinate_workers (last_heartbeat)"
        " VALUES (now() - interval '60 seconds') RETURNING id)"
        " UPDATE procrastinate_jobs SET status = 'doing', worker_id = (SELECT id FROM w)",
    )
    with procrastinate_app.replace_connector(connector_for(database_url)):
        async with procrastinate_app.open_async():
            manager = procrastinate_app.job_manager
            alive = await recovery.retry_stalled_jobs(manager, stalled_seconds=120)
            assert alive == []  # 60 s silent is not stalled by a 120 s timeout
            both = await asyncio.gather(
                recovery.retry_stalled_jobs(manager, stalled_seconds=5),
                recovery.retry_stalled_jobs(manager, stalled_seconds=5),
            )
    [job] = await risk_jobs(owner_engine)
    assert sorted(len(retried) for retried in both) == [0, 1]  # one of them moved it
    assert (job.status, job.attempts) == ("todo", 1)

    await run_worker(database_url, wait=False, install_signal_handlers=False)
    assert await risk_status(owner_engine, order_id) in ("PASSED", "FAILED")


# --- (c) the sweeper -----------------------------------------------------------------------


@pytest.fixture
def sweep_now(settings: Settings) -> Settings:
    return settings.model_copy(update={"risk_sweep_after_seconds": 0.0})


async def test_the_sweeper_re_defers_an_order_whose_job_is_gone_exactly_once(
    app: FastAPI,
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    database_url: str,
    sweep_now: Settings,
) -> None:
    deleted, failed = await submit(client, cast), await submit(client, cast)
    await owner_sql(
        owner_engine,
        "DELETE FROM procrastinate_jobs WHERE args->>'order_id' = :id",
        id=str(deleted),
    )
    await owner_sql(
        owner_engine,
        "UPDATE procrastinate_jobs SET status = 'failed' WHERE args->>'order_id' = :id",
        id=str(failed),
    )
    db = app.state.db

    first, second = await asyncio.gather(  # two workers sweeping at the same moment
        recovery.resume_pending_risk_checks(db, sweep_now),
        recovery.resume_pending_risk_checks(db, sweep_now),
    )
    assert sorted(first + second) == [deleted, failed]
    assert await recovery.resume_pending_risk_checks(db, sweep_now) == []  # already queued
    live = [j for j in await risk_jobs(owner_engine) if j.status == "todo"]
    assert sorted(j.args["order_id"] for j in live) == [deleted, failed]
    assert {j.lock for j in live} == {f"order:{deleted}", f"order:{failed}"}

    await run_worker(database_url, wait=False, install_signal_handlers=False)
    for order_id in (deleted, failed):
        assert await risk_status(owner_engine, order_id) in ("PASSED", "FAILED")
    assert await recovery.resume_pending_risk_checks(db, sweep_now) == []  # nothing awaits


async def test_a_running_worker_sweeps_on_its_own_schedule(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    database_url: str,
    settings: Settings,
) -> None:
    """What `tradeops worker` runs: the periodic sweep finds the jobless order and checks it."""
    order_id = await submit(client, cast)
    await owner_sql(owner_engine, "DELETE FROM procrastinate_jobs")
    quick = settings.model_copy(update={"risk_sweep_after_seconds": 1.0})
    worker = asyncio.create_task(
        run_worker(database_url, install_signal_handlers=False, settings=quick)
    )
    try:

        async def checked() -> bool:
            return await risk_status(owner_engine, order_id) in ("PASSED", "FAILED")

        took = await wait_for(checked, 40, "the sweeper re-defers and a worker checks")
        print(f"jobless order checked {took:.1f} s after the worker started")
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    async with owner_engine.connect() as conn:
        ran = await conn.execute(
            text("SELECT DISTINCT task_name FROM procrastinate_jobs ORDER BY task_name")
        )
        assert {r.task_name for r in ran} >= {"check_order_risk", "resume_pending_risk_checks"}


async def test_the_sweeper_leaves_an_order_with_a_live_job_or_a_recent_one_alone(
    app: FastAPI,
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    settings: Settings,
    sweep_now: Settings,
) -> None:
    queued, running = await submit(client, cast), await submit(client, cast)
    await owner_sql(
        owner_engine,
        "UPDATE procrastinate_jobs SET status = 'doing' WHERE args->>'order_id' = :id",
        id=str(running),
    )
    assert await recovery.resume_pending_risk_checks(app.state.db, sweep_now) == []
    assert len(await risk_jobs(owner_engine)) == 2

    await owner_sql(owner_engine, "DELETE FROM procrastinate_jobs")
    # Jobless, but submitted less than risk_sweep_after_seconds (60 s by default) ago.
    assert await recovery.resume_pending_risk_checks(app.state.db, settings) == []
    assert queued != running


async def test_a_check_running_far_too_long_on_a_live_worker_is_queued_again(
    app: FastAPI,
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    database_url: str,
    sweep_now: Settings,
) -> None:
    """The worker lost the database while finishing the check, then got it back: it
    heartbeats on, but its job stays `doing` forever unless the sweeper steps in."""
    order_id = await submit(client, cast)
    await owner_sql(
        owner_engine,
        "WITH w AS (INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id)"
        " UPDATE procrastinate_jobs SET status = 'doing', worker_id = (SELECT id FROM w)",
    )
    assert await recovery.resume_pending_risk_checks(app.state.db, sweep_now) == []  # running
    await owner_sql(
        owner_engine,
        "UPDATE procrastinate_events SET at = now() - interval '301 seconds'"
        " WHERE type = 'started'",
    )
    both = await asyncio.gather(
        recovery.resume_pending_risk_checks(app.state.db, sweep_now),
        recovery.resume_pending_risk_checks(app.state.db, sweep_now),
    )
    assert sorted(both) == [[], [order_id]]
    [job] = await risk_jobs(owner_engine)
    assert (job.status, job.attempts) == ("todo", 1)  # the same job, not a second one

    await run_worker(database_url, wait=False, install_signal_handlers=False)
    assert await risk_status(owner_engine, order_id) in ("PASSED", "FAILED")


async def test_the_sweeper_ignores_orders_nobody_can_approve_any_more(
    app: FastAPI,
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    sweep_now: Settings,
) -> None:
    order_id = await submit(client, cast)
    cancelled = await client.post(
        f"{ORDERS}/{order_id}/cancel", json={"reason": "client"}, headers=cast["trader"]
    )
    assert cancelled.status_code == 200, cancelled.text
    await owner_sql(owner_engine, "DELETE FROM procrastinate_jobs")
    assert await recovery.resume_pending_risk_checks(app.state.db, sweep_now) == []


async def test_the_sweeper_reads_orders_through_row_level_security(
    app: FastAPI,
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    sweep_now: Settings,
) -> None:
    """Run as the system it sees every desk; the same read as a one-desk trader sees only
    that desk's orders (the policy applies to it, not a privileged bypass)."""
    from tradeops.auth.principal import Principal, Role
    from tradeops.db.uow import run_in_transaction
    from tradeops.risk import repository as risk_repo

    mine = await submit(client, cast)
    fi_order = {**SEED_ORDER, "client_id": "CUST-2001"}
    other = await client.post(ORDERS, json=fi_order, headers=cast["trader_fi"])
    assert other.status_code == 201, other.text
    await owner_sql(owner_engine, "DELETE FROM procrastinate_jobs")
    async with owner_engine.connect() as conn:
        eq_us = await conn.scalar(text("SELECT id FROM desks WHERE code = 'EQ-US'"))
    trader = Principal(cast.ids["trader"], "trader@test.bank", Role.TRADER, frozenset({eq_us}))

    async def awaiting(uow: Any) -> list[int]:
        rows = await uow.rows(risk_repo.AWAITING_CHECK, {"older_than_seconds": 0.0, "limit": 100})
        return [r.id for r in rows]

    assert await run_in_transaction(app.state.db, trader, awaiting) == [mine]
    resumed = await recovery.resume_pending_risk_checks(app.state.db, sweep_now)
    assert sorted(resumed) == sorted([mine, int(other.json()["id"])])


async def test_succeeded_housekeeping_runs_are_pruned_and_nothing_else(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await submit(client, cast)
    await owner_sql(owner_engine, "UPDATE procrastinate_jobs SET status = 'succeeded'")
    for status in ("succeeded", "succeeded", "failed"):
        await owner_sql(
            owner_engine,
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)"
            " VALUES ('housekeeping', 'retry_stalled_jobs', '{}', :status)",
            status=status,
        )
    assert await recovery.prune_succeeded_housekeeping(app.state.db) == 2
    async with owner_engine.connect() as conn:
        left = await conn.execute(
            text("SELECT queue_name, status::text FROM procrastinate_jobs ORDER BY id")
        )
        assert [tuple(r) for r in left] == [("risk", "succeeded"), ("housekeeping", "failed")]
