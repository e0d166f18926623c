"""Unexpected errors, an unavailable database and oversized requests: each is a problem
answered at once, logged once, without the request's secrets (issue 12, items 5 to 7)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import structlog
from fastapi import APIRouter, FastAPI, Request
from pydantic import SecretStr

from tests.factories import SEED_ORDER, Cast
from tests.live import LiveServer, free_port, serving
from tradeops.app import create_app
from tradeops.db.http import TransactionalRoute
from tradeops.db.pool import PoolTimeout
from tradeops.deps import LoginUoW
from tradeops.observability import configure_logging
from tradeops.settings import Settings

BEARER = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2VjcmV0LXNpZ25hdHVyZS1kby1ub3QtbG9n"
PASSWORD = "correct-horse-battery-staple-42"
API_KEY = "tro_abcdefghijkl_c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk"


@dataclass(frozen=True, slots=True)
class One:
    one: int


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


# --- the database unavailable: 503 with Retry-After, never 500 ------------------------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")


UNAVAILABLE = [
    asyncpg.InterfaceError("connection is closed"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
    asyncpg.InternalClientError("unexpected connection state"),
    ConnectionRefusedError(111, "Connect call failed"),
    ConnectionResetError(104, "Connection reset by peer"),
    OSError(113, "No route to host"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.CrashShutdownError("terminating connection due to crash"),
    asyncpg.exceptions.ConnectionFailureError("connection failure"),
    asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.exceptions.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only txn"),
    PoolTimeout("no database connection became free in time"),
]


def raising_routes(errors: dict[str, BaseException]) -> APIRouter:
    router = APIRouter(route_class=TransactionalRoute)

    @router.get("/test-only/raise/{name}")
    async def raise_it(name: str, uow: LoginUoW) -> None:
        raise errors[name]

    @router.get("/test-only/select")
    async def select(uow: LoginUoW, sleep: float = 0) -> dict[str, int]:
        answer = await uow.row_of("SELECT 1 AS one FROM pg_sleep(:s)", One, {"s": sleep})
        assert answer is not None
        return {"one": answer.one}

    return router


async def test_every_database_unavailable_error_is_a_503_with_retry_after(
    settings: Settings, database_url: str
) -> None:
    """Raised where a request's database work would raise them, answered by the app's one
    mapping; none is a 500."""
    errors = {type(e).__name__: e for e in UNAVAILABLE}
    app = create_app(settings, database_url)
    app.include_router(raising_routes(errors))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as http,
    ):
        for name in errors:
            response = await http.get(f"/test-only/raise/{name}")
            assert response.status_code == 503, (name, response.text)
            assert response.headers["content-type"] == "application/problem+json", name
            assert int(response.headers["retry-after"]) > 0, name
            assert "read-only" not in response.json()["detail"] or name.startswith("ReadOnly")


@pytest.fixture
def stoppable_postgres() -> Iterator[tuple[str, Callable[[], None]]]:
    """A PostgreSQL server of this test's own (never the shared one), and a way to kill it.

    Its directory is outside pytest's (private to root): as root, PostgreSQL runs as postgres.
    """
    home = Path(tempfile.mkdtemp(prefix="tradeops-pg-"))
    data, sockets = home / "pgdata", home / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        for path in (home, sockets):
            shutil.chown(path, "postgres")
    as_postgres = {"user": "postgres"} if os.geteuid() == 0 else {}
    subprocess.run(
        [PG_BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
        **as_postgres,  # type: ignore[arg-type]
    )
    port = free_port()
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"

    def pg_ctl(*args: str) -> None:
        subprocess.run(
            [PG_BIN / "pg_ctl", "-D", data, "-w", *args],
            check=True,
            capture_output=True,
            **as_postgres,  # type: ignore[arg-type]
        )

    pg_ctl("-o", options, "-l", str(home / "log"), "start")
    stopped = False

    def kill() -> None:
        nonlocal stopped
        pg_ctl("-m", "immediate", "stop")
        stopped = True

    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", kill
    finally:
        if not stopped:
            pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


async def test_a_killed_database_is_a_503_with_retry_after_for_every_request(
    settings: Settings, stoppable_postgres: tuple[str, Callable[[], None]]
) -> None:
    """The database dies under pooled connections: each request is answered 503, at once."""
    url, kill = stoppable_postgres
    app = create_app(settings, url)
    app.include_router(raising_routes({}))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as http,
    ):
        warm = await asyncio.gather(*(http.get("/test-only/select") for _ in range(4)))
        assert [r.status_code for r in warm] == [200] * 4
        in_flight = [
            asyncio.create_task(http.get("/test-only/select", params={"sleep": 5}))
            for _ in range(4)
        ]
        await asyncio.sleep(0.5)  # the queries are running
        kill()
        answers = await asyncio.gather(*in_flight)
        answers += await asyncio.gather(*(http.get("/test-only/select") for _ in range(4)))
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert int(answer.headers["retry-after"]) > 0


async def test_a_read_only_database_is_a_503_saying_so(
    settings: Settings, database_url: str, cast: Cast
) -> None:
    """A standby (or a primary made read-only) refuses writes with 25006: unavailable for
    writes, retry later; reads still work."""
    # The embedded server's URL already has a query (?host=its socket directory).
    joiner = "&" if "?" in database_url else "?"
    read_only = f"{database_url}{joiner}default_transaction_read_only=on"
    app = create_app(settings, read_only)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as http,
    ):
        write = await http.post("/api/v1/orders", json=SEED_ORDER, headers=cast["trader"])
        read = await http.get("/api/v1/orders", headers=cast["trader"])
    assert write.status_code == 503, write.text
    assert write.headers["retry-after"]
    assert write.json()["type"].endswith("/database-read-only")
    assert "read-only" in write.json()["detail"]
    assert read.status_code == 200


# --- limits: request headers, and what prod keeps private -----------------------------------

HUGE_AUTHORIZATION = {"Authorization": "Bearer " + "A" * (8 * 1024 * 1024)}


async def test_headers_past_the_cap_are_a_431_problem(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    refused = await client.get("/api/v1/orders", headers=HUGE_AUTHORIZATION)
    assert refused.status_code == 431, refused.text[:200]
    assert refused.headers["content-type"] == "application/problem+json"
    assert str(settings.max_header_bytes) in refused.json()["detail"]
    just_under = {"X-Note": "n" * (settings.max_header_bytes - 1024)}
    assert (await client.get("/health/live", headers=just_under)).status_code == 200


async def test_a_refusal_at_the_door_has_the_request_id_and_the_response_headers(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """The caps are checked in the request context's layer: a 431 or 413 carries the
    request's id (header and problem) and the headers every answer has."""
    headers = {**HUGE_AUTHORIZATION, "X-Request-ID": "req-431"}
    too_many = await client.get("/api/v1/orders", headers=headers)
    too_large = await client.post(
        "/api/v1/orders",
        content=b"{}",
        headers={"Content-Length": str(settings.max_body_bytes + 1), "X-Request-ID": "req-413"},
    )
    for refused, status, request_id in ((too_many, 431, "req-431"), (too_large, 413, "req-413")):
        assert refused.status_code == status, refused.text[:200]
        assert refused.headers["x-request-id"] == request_id
        assert refused.json()["request_id"] == request_id
        assert refused.headers["x-content-type-options"] == "nosniff"
        assert refused.headers["cache-control"] == "no-store"
    assert too_many.headers["connection"] == "close"


async def test_a_chunked_body_past_the_cap_is_a_413_problem(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """No length up front: the body is counted as it arrives."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(settings.max_body_bytes // 1024 + 2):
            yield b"x" * 1024

    refused = await client.post("/api/v1/orders", content=chunks())
    assert "content-length" not in refused.request.headers
    assert refused.status_code == 413, refused.text[:200]
    assert refused.json()["type"].endswith("/payload-too-large")
    assert refused.json()["request_id"] == refused.headers["x-request-id"]


def test_the_live_server_refuses_an_8_mb_header_without_reading_it(live_server: LiveServer) -> None:
    """The server's parser would buffer it all before the app saw it: the served protocol
    answers once the head passes the cap, and the client reads that answer."""
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        refused = http.get("/api/v1/orders", headers=HUGE_AUTHORIZATION)
        assert refused.status_code == 431
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["request_id"] is None, "answered by the server, not the app"
        assert http.get("/health/live").status_code == 200


METRICS_TOKEN = "m" * 40


def prod_settings(settings: Settings, **changes: object) -> Settings:
    secrets = {"secret_key": SecretStr("s" * 40), "audit_key": SecretStr("a" * 40)}
    return Settings.model_validate({**settings.model_dump(), "env": "prod", **secrets, **changes})


async def test_prod_metrics_need_the_metrics_token(settings: Settings, database_url: str) -> None:
    app = create_app(prod_settings(settings, metrics_token=SecretStr(METRICS_TOKEN)), database_url)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
    ) as http:
        anonymous = await http.get("/metrics")
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer " + "x" * 40})
        right = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    for refused in (anonymous, wrong):
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "tradeops_http_requests_total" not in refused.text
    assert right.status_code == 200
    assert "tradeops_http_requests_total" in right.text


async def test_prod_without_a_metrics_token_serves_no_metrics(
    settings: Settings, database_url: str
) -> None:
    app = create_app(prod_settings(settings), database_url)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
    ) as http:
        assert (await http.get("/metrics")).status_code == 404


def test_a_short_metrics_token_is_refused_in_prod(settings: Settings) -> None:
    with pytest.raises(ValueError, match="TRADEOPS_METRICS_TOKEN"):
        prod_settings(settings, metrics_token=SecretStr("short"))


@pytest.mark.parametrize(
    ("env", "docs_enabled", "served"),
    [("prod", None, False), ("prod", True, True), ("test", None, True), ("test", False, False)],
)
async def test_api_docs_follow_the_setting_and_are_off_in_prod_by_default(
    settings: Settings, database_url: str, env: str, docs_enabled: bool | None, served: bool
) -> None:
    chosen = (
        prod_settings(settings, docs_enabled=docs_enabled)
        if env == "prod"
        else settings.model_copy(update={"docs_enabled": docs_enabled})
    )
    app = create_app(chosen, database_url)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
    ) as http:
        for path in ("/docs", "/redoc", "/openapi.json"):
            status = (await http.get(path)).status_code
            assert status == (200 if served else 404), (path, status)
