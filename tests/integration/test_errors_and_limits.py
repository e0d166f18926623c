"""Unexpected errors, an unavailable database and oversized requests: each is a problem
answered at once, logged once, without the request's secrets (issue 12, items 5 to 7)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator

import httpx
import pytest
import structlog
from fastapi import APIRouter, FastAPI, Request

from tests.live import serving
from tradeops.app import create_app
from tradeops.observability import configure_logging
from tradeops.settings import Settings

BEARER = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2VjcmV0LXNpZ25hdHVyZS1kby1ub3QtbG9n"
PASSWORD = "correct-horse-battery-staple-42"
API_KEY = "tro_abcdefghijkl_c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk"


@pytest.fixture
def captured_log(settings: Settings) -> Iterator[io.StringIO]:
    """Everything the app logs, as JSON lines in memory (structlog's and the stdlib's)."""
    stream = io.StringIO()
    configure_logging(settings.model_copy(update={"log_format": "json"}), stream=stream)
    yield stream
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


def failing_routes() -> APIRouter:
    """Routes that fail the way a bug would, with credentials in their local variables.

    Only this test module has them: the shipped app has no route that raises on purpose."""
    router = APIRouter()

    @router.get("/test-only/bug")
    async def bug(request: Request) -> None:
        authorization = request.headers["authorization"]
        api_key = request.headers["x-api-key"]  # noqa: F841  (locals that must not be logged)
        ballast = [{"row": i, "note": "x" * 200} for i in range(5000)]  # noqa: F841
        raise ValueError(f"invalid literal for int() with base 10: {authorization!r:.20}")

    @router.post("/test-only/sign-in-bug")
    async def sign_in_bug(request: Request) -> None:
        form = await request.form()
        password = form["password"]  # noqa: F841
        raise RuntimeError("password check failed")

    return router


def app_with_bugs(settings: Settings, database_url: str) -> FastAPI:
    app = create_app(settings, database_url)
    app.include_router(failing_routes())
    return app


def assert_no_secrets(log: str) -> None:
    for secret in (BEARER, PASSWORD, API_KEY):
        for piece in (secret[:12], secret[-12:]):
            assert piece not in log, f"{piece!r} of a credential was logged"


async def test_a_bug_is_one_500_problem_logged_once_without_locals_or_credentials(
    settings: Settings, database_url: str, captured_log: io.StringIO
) -> None:
    app = app_with_bugs(settings, database_url)
    headers = {"Authorization": f"Bearer {BEARER}", "X-API-Key": API_KEY}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as http,
    ):
        await http.get("/health/live")  # the app's first request builds what it caches
        started = time.perf_counter()
        response = await http.get("/test-only/bug", headers=headers)
        elapsed = time.perf_counter() - started
        sign_in = await http.post("/test-only/sign-in-bug", data={"password": PASSWORD})
    for failed in (response, sign_in):
        assert failed.status_code == 500
        assert failed.headers["content-type"] == "application/problem+json"
        assert failed.json()["type"].endswith("/internal-error")
    assert elapsed < 0.2, f"the 500 took {elapsed * 1000:.0f} ms"
    log = captured_log.getvalue()
    lines = [json.loads(line) for line in log.splitlines()]
    errors = [line for line in lines if line.get("level") == "error"]
    assert len(errors) == 2, "each failure is logged once"
    assert errors[0]["request_id"] == response.json()["request_id"]
    frames = errors[0]["exception"][0]["frames"]
    assert frames[-1]["name"] == "bug"
    assert all("locals" not in frame for frame in frames)
    assert "ballast" not in log
    assert max(len(line) for line in log.splitlines()) <= 16 * 1024
    assert_no_secrets(log)


async def test_a_500_does_not_hold_up_the_next_request(
    settings: Settings, database_url: str, captured_log: io.StringIO
) -> None:
    """On a real server: while one request fails, another is answered at its usual speed."""
    app = app_with_bugs(settings, database_url)
    headers = {"Authorization": f"Bearer {BEARER}", "X-API-Key": API_KEY}
    with serving(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            await http.get("/health/live")  # connections open, code warm

            async def ordinary() -> float:
                await asyncio.sleep(0.005)  # just after the failing one arrives
                started = time.perf_counter()
                assert (await http.get("/health/live")).status_code == 200
                return time.perf_counter() - started

            failed, next_took = await asyncio.gather(
                http.get("/test-only/bug", headers=headers), ordinary()
            )
    assert failed.status_code == 500
    assert next_took < 0.2, f"the next request waited {next_took * 1000:.0f} ms"
    assert_no_secrets(captured_log.getvalue())


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_logged_exception_shows_no_locals_and_is_bounded(
    settings: Settings, log_format: str
) -> None:
    stream = io.StringIO()
    configure_logging(settings.model_copy(update={"log_format": log_format}), stream=stream)
    try:
        password = PASSWORD  # noqa: F841  (a local that must not be logged)

        def deep(n: int) -> None:
            if n:
                deep(n - 1)
            raise ValueError("y" * 100_000)

        try:
            deep(500)
        except ValueError:
            started = time.perf_counter()
            structlog.get_logger().exception("unhandled error", authorization=f"Bearer {BEARER}")
            took = time.perf_counter() - started
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    log = stream.getvalue()
    assert took < 0.05, f"rendering took {took * 1000:.0f} ms"
    assert len(log) <= 16 * 1024
    assert_no_secrets(log)
    assert "deep" in log
