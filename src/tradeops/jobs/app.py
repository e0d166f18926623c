"""The worker: runs the tasks registered on `registry.app`, on our one PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext, suppress
from typing import Any

import psycopg
import structlog
from procrastinate import PsycopgConnector
from procrastinate.periodic import PeriodicRegistry

from tradeops.db.pool import Database
from tradeops.db.transient import is_transient
from tradeops.db.urls import libpq_url
from tradeops.jobs.registry import app
from tradeops.settings import Settings, get_settings

log = structlog.get_logger("tradeops.jobs")


class JobsConnector(PsycopgConnector):
    """procrastinate's psycopg connector, with LISTEN on a connection of its own URL.

    The jobs' queries may go through a pooler in transaction mode (PgBouncer); LISTEN may
    not: the pooler hands the listening server connection to other clients and the worker
    never hears of a new job. procrastinate opens that connection apart from its pool (for
    LISTEN alone), so it is opened here to `listen_url`, which reaches PostgreSQL directly."""

    def __init__(self, *, listen_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._listen_url = listen_url

    @asynccontextmanager
    async def _get_standalone_connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        connection = await psycopg.AsyncConnection.connect(self._listen_url, autocommit=True)
        async with connection:
            yield connection


def connector_for(database_url: str, settings: Settings | None = None) -> PsycopgConnector:
    """A connector to `database_url` (any driver spelling), as the database owner, listening
    on TRADEOPS_WORKER_LISTEN_DATABASE_URL when set."""
    settings = settings or get_settings()
    # psycopg prepares a statement run five times on a connection; behind a pooler without
    # prepared-statement support that name would be missing on the next server connection.
    connect = {} if settings.db_prepared_statements else {"prepare_threshold": None}
    listen_url = settings.worker_listen_database_url or database_url
    return JobsConnector(
        conninfo=libpq_url(database_url), kwargs=connect, listen_url=libpq_url(listen_url)
    )


@contextmanager
def _without_schedule() -> Iterator[None]:
    """No periodic task is deferred meanwhile (the registry is the app's, so swap it)."""
    registry = app.periodic_registry
    app.periodic_registry = PeriodicRegistry()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        app.periodic_registry = registry


async def run_worker(
    database_url: str,
    *,
    concurrency: int = 1,
    wait: bool = True,
    install_signal_handlers: bool = True,
    settings: Settings | None = None,
    periodic: bool | None = None,
) -> None:
    """Run jobs from every queue; with wait=False, return once the queues are empty.

    Tasks reach the application's database the way requests do, through the pool (and the
    settings) handed to them in the job context. The worker heartbeats every
    worker_heartbeat_seconds; with `periodic` (default: a worker that waits for jobs) it also
    defers the periodic tasks: stalled jobs retried, orders awaiting a check re-deferred. A
    worker that drains the queues and returns (wait=False) has no schedule to keep. It hears
    of new jobs by LISTEN (on worker_listen_database_url when set) and looks for jobs every
    worker_poll_seconds besides; with worker_listen off only the latter.

    A waiting worker outlives the database: procrastinate stops a worker whose heartbeat or
    job fetch fails (a restarted PostgreSQL), so the worker is started again, after 1 s and
    then up to 10 s apart, until SIGINT or SIGTERM asks it to stop."""
    import tradeops.jobs.tasks  # noqa: F401  (registers the tasks)

    settings = settings or get_settings()
    db = Database(settings, database_url)
    stop_requested = asyncio.Event()
    try:
        with (
            app.replace_connector(connector_for(database_url, settings)),
            nullcontext() if (wait if periodic is None else periodic) else _without_schedule(),
            _stop_on_signals(stop_requested) if install_signal_handlers else nullcontext(),
        ):
            pause = 1.0
            while True:
                try:
                    await _work_until_stopped(
                        stop_requested,
                        concurrency=concurrency,
                        wait=wait,
                        name="tradeops-worker",
                        update_heartbeat_interval=settings.worker_heartbeat_seconds,
                        stalled_worker_timeout=settings.worker_stalled_seconds,
                        listen_notify=settings.worker_listen,
                        fetch_job_polling_interval=settings.worker_poll_seconds,
                        additional_context={"db": db, "settings": settings},
                    )
                except Exception as error:
                    if not is_transient(error):
                        raise
                    log.warning("worker lost the database", error=repr(error))
                if stop_requested.is_set() or not wait:
                    return
                log.warning("worker stopped without being asked; starting again", after_s=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)
    finally:
        await db.dispose()


async def _work_until_stopped(stop_requested: asyncio.Event, **options: Any) -> None:
    """One run of procrastinate's worker; a stop request ends it gracefully (the running jobs
    finish: procrastinate answers the cancellation with its own stop)."""
    async with app.open_async():
        run = asyncio.create_task(app.run_worker_async(install_signal_handlers=False, **options))
        stopping = asyncio.create_task(stop_requested.wait())
        try:
            await asyncio.wait({run, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when this task is cancelled: the worker stops (its running jobs finish and
            # record their status) before the app and its connections close under it.
            stopping.cancel()
            if not run.done():
                run.cancel()
            with suppress(asyncio.CancelledError):
                await run


@contextmanager
def _stop_on_signals(stop_requested: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_requested.set)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
