"""A real tradeops server on a free local port, for clients that need a socket (MCP, browsers).

The server runs in its own thread and event loop on the suite's test database, with the
same settings as the in-process app. It is session-scoped: start-up costs once.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import uvicorn
from fastapi import FastAPI

from tradeops.app import create_app
from tradeops.header_limits import HeaderLimitedHttpToolsProtocol
from tradeops.settings import Settings


@dataclass(frozen=True)
class LiveServer:
    url: str  # e.g. http://127.0.0.1:54321, no trailing slash
    app_state: object  # the served app's state (tokens, settings) for arranging tests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """`app` served by uvicorn on a free port in a thread of its own; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        http=HeaderLimitedHttpToolsProtocol,  # as `tradeops serve` runs it
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live tradeops server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def live_server(settings: Settings, database_url: str) -> Iterator[LiveServer]:
    app = create_app(settings, database_url)
    with serving(app) as url:
        yield LiveServer(url=url, app_state=app.state)
