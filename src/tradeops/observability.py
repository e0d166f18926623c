"""Structured logs, request ids, access logs and Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tradeops.db.pool import Database
from tradeops.log_records import bounded, clean_event, exception_renderer, json_line
from tradeops.numeric_input import parse_count
from tradeops.problems import problem_bytes, problem_parts
from tradeops.settings import Settings

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

access_log = structlog.get_logger(component="tradeops.access")


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """JSON lines in production, readable console lines in development.

    Our own log calls go straight from structlog to stdout, or `stream` (`tradeops mcp` keeps
    stdout for the protocol), skipping the stdlib logging machinery, which cost measurable
    throughput on the access log; other libraries' records (uvicorn, alembic) pass through
    stdlib logging with the same processors and renderer.
    """
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    json_lines = settings.log_renderer == "json"
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=json_line)
        if json_lines
        else bounded(
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            )
        )
    )
    # Exceptions without locals, credentials masked, sizes bounded (log_records.py says why).
    safe = [exception_renderer(json_lines), clean_event]
    structlog.configure(
        processors=[*shared, *safe, renderer],
        # stdout as it is when a logger is made, unless told otherwise
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # Tests reconfigure logging; everywhere else the first configuration is final.
        cache_logger_on_first_use=settings.env != "test",
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *safe,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # uvicorn's own access log would duplicate ours, without the request id.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True


def log_to_file(path: Path, *names: str) -> None:
    """Send these libraries' records to `path` instead of the terminal (set-up chatter a
    newcomer need not read, kept for when something goes wrong)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


# prometheus_client's multiprocess mode: set (by `serve --workers N`) before it is imported.
SHARED_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
POOL_GAUGE_REFRESH_SECONDS = 1.0  # a process's pool gauge, as a scrape of another sees it
POOL_GAUGE_HELP = "Database pool connections by state."


class Metrics:
    """The application's Prometheus metrics, and `registry`, what a scrape of /metrics reads.

    In one process, a registry per app (so tests can build many apps). With several worker
    processes (`serve --workers N` sets PROMETHEUS_MULTIPROC_DIR), each process writes its
    values to files in that directory, and a scrape, whichever process answers it, reads
    every process's files: the request counts and latencies are sums over the processes, the
    pool gauge has a series per live process (label `pid`; sum them for the server's total).
    """

    def __init__(self) -> None:
        self.shared_dir = os.environ.get(SHARED_METRICS_DIR)
        self.registry = CollectorRegistry()
        # Shared: the values live in the files, not in a registry (the collector reads them).
        own = None if self.shared_dir else self.registry
        self.requests = Counter(
            "tradeops_http_requests_total",
            "HTTP requests by route template and status.",
            ["method", "route", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "tradeops_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["method", "route", "status"],
            registry=own,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        if self.shared_dir:
            self.registry.register(ForgetDeadProcesses(self.shared_dir))
            multiprocess.MultiProcessCollector(self.registry, path=self.shared_dir)  # type: ignore[no-untyped-call]

    @contextlib.asynccontextmanager
    async def watching_pool(self, db: Database) -> AsyncIterator[None]:
        """The pool gauge for as long as the app runs."""
        if not self.shared_dir:
            # Read at each scrape: exact, and nothing runs in between.
            self.registry.register(PoolCollector(db))
            yield
            return
        # Other processes read this one's gauge from its file: write it down every second.
        gauge = Gauge(
            "tradeops_db_pool_connections",
            POOL_GAUGE_HELP,
            ["state"],
            registry=None,
            multiprocess_mode="liveall",
        )
        refresh = asyncio.create_task(_refresh_pool_gauge(gauge, db))
        try:
            yield
        finally:
            refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresh
            # A stopped process's pool is gone: its series leave the scrape.
            multiprocess.mark_process_dead(os.getpid(), self.shared_dir)  # type: ignore[no-untyped-call]


async def _refresh_pool_gauge(gauge: Gauge, db: Database) -> None:
    while True:
        in_use, idle = db.connections()
        gauge.labels("in_use").set(in_use)
        gauge.labels("idle").set(idle)
        await asyncio.sleep(POOL_GAUGE_REFRESH_SECONDS)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's
    return True


class ForgetDeadProcesses(Collector):
    """Before a shared scrape: the live gauges of worker processes that died without saying
    so (killed by the supervisor or the system) leave, as a stopped process's do."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def collect(self) -> Iterable[Metric]:
        for path in self.directory.glob("gauge_live*_*.db"):
            pid = path.stem.rsplit("_", 1)[1]
            if pid.isdigit() and not _running(int(pid)):
                multiprocess.mark_process_dead(int(pid), str(self.directory))  # type: ignore[no-untyped-call]
        return []


class PoolCollector(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterable[GaugeMetricFamily]:
        in_use, idle = self.db.connections()
        gauge = GaugeMetricFamily("tradeops_db_pool_connections", POOL_GAUGE_HELP, labels=["state"])
        gauge.add_metric(["in_use"], float(in_use))
        gauge.add_metric(["idle"], float(idle))
        yield gauge


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    # Unmatched paths are one label, so a scanner cannot blow up the metric's cardinality.
    return path if isinstance(path, str) else "<unmatched>"


class RequestContextMiddleware:
    """Request id in and out, bound to every log line; one access line and metrics per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics, *, access_log_enabled: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log_enabled = access_log_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, REQUEST_ID_HEADER.encode())
        request_id = (
            incoming if incoming and _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        )
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        extra_headers = [(REQUEST_ID_HEADER.encode(), request_id.encode()), *SECURITY_HEADERS]
        if scope["path"].startswith("/api/") or _header(scope, b"authorization"):
            # API answers are a caller's data or tokens (RFC 6749 5.1): never cache them.
            extra_headers.append((b"cache-control", b"no-store"))

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message["headers"] = [*message.get("headers", []), *extra_headers]
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception as error:
            await answer_error(scope, send_with_request_id, error, response_started)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route, str(status)).observe(elapsed)
            if self.access_log_enabled:
                access_log.info(
                    "request",
                    method=method,
                    path=scope["path"],
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.clear_contextvars()


async def answer_error(scope: Scope, send: Send, error: Exception, response_started: bool) -> None:
    """A problem document for what no exception handler answered (a bug, a driver failure in
    a middleware or a streamed body), logged once here and never raised on: the server would
    log it again, and the client would be left without an answer.

    Starlette's outermost error middleware would answer too, but re-raise to the server."""
    parts = problem_parts(error)
    if response_started:
        # Too late for a problem document: ending here makes the server close the connection,
        # which tells the client the response is incomplete.
        access_log.warning("response failed after it started", error=type(error).__name__)
        return
    body = problem_bytes(
        status=parts.status,
        slug=parts.slug,
        title=parts.title,
        detail=parts.detail,
        instance=scope["path"],
        request_id=scope.get("state", {}).get("request_id"),
        **parts.extensions,
    )
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in (parts.headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": parts.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body exceeds {limit} bytes.")


class BodySizeLimitMiddleware:
    """413 for request bodies over the limit, as a problem document, before anything parses them."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, larger: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = dict(larger or {})  # exact paths allowed a larger body (bulk uploads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope["path"], self.max_bytes)
        declared = parse_count(_header(scope, b"content-length") or "", max_digits=20)
        if declared is not None and declared > limit:
            await self._refuse(scope, send, limit)
            return
        received = 0

        async def counting_receive() -> Message:
            # A chunked body has no length up front: count it as it arrives. The exception
            # is an HTTPException, so the framework renders it through the problem handler.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, scope: Scope, send: Send, limit: int) -> None:
        body = problem_bytes(
            status=413,
            slug="payload-too-large",
            title="Request body too large",
            detail=f"The request body exceeds {limit} bytes.",
            instance=scope["path"],
            request_id=scope.get("state", {}).get("request_id"),
        )
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
