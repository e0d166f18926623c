"""The worker: runs the tasks registered on `registry.app`, on our one PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from procrastinate import PsycopgConnector
from procrastinate.periodic import PeriodicRegistry

from tradeops.db.pool import Database
from tradeops.db.urls import libpq_url
from tradeops.jobs.registry import app
from tradeops.settings import Settings, get_settings


def connector_for(database_url: str) -> PsycopgConnector:
    """A connector to `database_url` (any driver spelling), as the database owner."""
    return PsycopgConnector(conninfo=libpq_url(database_url))


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
    worker that drains the queues and returns (wait=False) has no schedule to keep."""
    import tradeops.jobs.tasks  # noqa: F401  (registers the tasks)

    settings = settings or get_settings()
    db = Database(settings, database_url)
    try:
        with (
            app.replace_connector(connector_for(database_url)),
            nullcontext() if (wait if periodic is None else periodic) else _without_schedule(),
        ):
            async with app.open_async():
                await app.run_worker_async(
                    concurrency=concurrency,
                    wait=wait,
                    install_signal_handlers=install_signal_handlers,
                    name="tradeops-worker",
                    update_heartbeat_interval=settings.worker_heartbeat_seconds,
                    stalled_worker_timeout=settings.worker_stalled_seconds,
                    additional_context={"db": db, "settings": settings},
                )
    finally:
        await db.dispose()
