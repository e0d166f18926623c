"""The live-server fixture serves the real app over a socket (used by MCP and browser tests)."""

from __future__ import annotations

import httpx
import pytest

from tests.live import LiveServer

pytestmark = pytest.mark.slow


async def test_live_server_answers_over_tcp(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        response = await http.get("/api/v1/health-check/db", headers={"X-Request-ID": "live-1"})
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "db": "reachable"}
    assert response.headers["X-Request-ID"] == "live-1"
