"""uvicorn for `tradeops serve` and `tradeops dev`: one process, or N worker processes that
share the listening socket and one Prometheus metrics directory.

A worker process imports the command line first (it is the process's `__main__`) and only
then starts the thread that answers the supervisor's health checks; so the command line
imports nothing heavy (tests/unit/test_lazy_imports.py), and the app and its HTTP protocol
are named here as strings, imported by each worker once it answers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from tradeops.settings import Settings, get_settings

APP_FACTORY = "tradeops.app:create_app_from_env"
# httptools has no cap on a request's headers: this protocol adds one (431).
HTTP_PROTOCOL = "tradeops.header_limits:HeaderLimitedHttpToolsProtocol"
# prometheus_client's switch to multiprocess mode, read when a process first imports it.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def uvicorn_options(settings: Settings, host: str, port: int) -> dict[str, object]:
    return {
        "factory": True,
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,
        "proxy_headers": True,
        "http": HTTP_PROTOCOL,
        "timeout_worker_healthcheck": settings.serve_healthcheck_timeout_seconds,
    }


@contextmanager
def shared_metrics_directory(settings: Settings) -> Iterator[Path]:
    """The metrics directory of N worker processes, in the environment they inherit.

    TRADEOPS_METRICS_DIR, wiped of an earlier run's files (prometheus_client would add a
    dead run's counts in), or else a temporary directory, removed afterwards."""
    configured = settings.metrics_dir
    if configured is None:
        directory = Path(tempfile.mkdtemp(prefix="tradeops-metrics-"))
    else:
        directory = configured
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
    previous = os.environ.get(MULTIPROCESS_DIR)
    os.environ[MULTIPROCESS_DIR] = str(directory)
    try:
        yield directory
    finally:
        if previous is None:
            del os.environ[MULTIPROCESS_DIR]
        else:
            os.environ[MULTIPROCESS_DIR] = previous
        if configured is None:
            shutil.rmtree(directory, ignore_errors=True)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


class _AnnouncingServer(uvicorn.Server):
    """uvicorn's server, calling `on_ready` once it listens (after its start-up lines)."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_ready()


def serve(
    settings: Settings,
    url: str,
    host: str,
    port: int,
    workers: int,
    on_ready: Callable[[], None] | None = None,
) -> None:
    # Worker processes build their own app from the environment, so hand the URL on.
    os.environ["TRADEOPS_DATABASE_URL"] = url
    get_settings.cache_clear()
    # uvicorn shuts down gracefully, then re-raises the signal it caught. With Python's default
    # SIGTERM handler that would end the process at once, skipping the clean-up below and the
    # embedded PostgreSQL's stop at exit; raising SystemExit lets both run.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    options = uvicorn_options(settings, host, port)
    if workers > 1:
        with shared_metrics_directory(settings):
            uvicorn.run(APP_FACTORY, workers=workers, **options)  # type: ignore[arg-type]
        return
    if on_ready is None:
        uvicorn.run(APP_FACTORY, **options)  # type: ignore[arg-type]
        return
    server = _AnnouncingServer(uvicorn.Config(APP_FACTORY, **options), on_ready)  # type: ignore[arg-type]
    server.run()
    if not server.started:
        raise SystemExit(3)  # uvicorn's start-up failure code; it has logged why
