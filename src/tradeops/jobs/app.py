"""The procrastinate App and its worker, on the same PostgreSQL as everything else."""

from __future__ import annotations

from procrastinate import App, PsycopgConnector

from tradeops.db.pool import Database
from tradeops.db.urls import libpq_url
from tradeops.settings import Settings, get_settings

# Tasks register on this app at import; the connector is set when a worker (or a test)
# knows the database URL, with `connector_for`.
app = App(connector=PsycopgConnector(), import_paths=["tradeops.jobs.tasks"])


def connector_for(database_url: str) -> PsycopgConnector:
    """A connector to `database_url` (any driver spelling), as the database owner."""
    return PsycopgConnector(conninfo=libpq_url(database_url))


async def run_worker(
    database_url: str,
    *,
    concurrency: int = 1,
    wait: bool = True,
    install_signal_handlers: bool = True,
    settings: Settings | None = None,
) -> None:
    """Run jobs from every queue; with wait=False, return once the queues are empty.

    Tasks reach the application's database the way requests do, through the pool (and the
    settings) handed to them in the job context."""
    import tradeops.jobs.tasks  # noqa: F401  (registers the tasks)

    settings = settings or get_settings()
    db = Database(settings, database_url)
    try:
        with app.replace_connector(connector_for(database_url)):
            async with app.open_async():
                await app.run_worker_async(
                    concurrency=concurrency,
                    wait=wait,
                    install_signal_handlers=install_signal_handlers,
                    name="tradeops-worker",
                    additional_context={"db": db, "settings": settings},
                )
    finally:
        await db.dispose()
