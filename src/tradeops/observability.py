"""Structured logs, request ids, access logs and Prometheus metrics."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tradeops.background import in_background
from tradeops.db.pool import Database
from tradeops.header_limits import refuse_headers
from tradeops.log_records import bounded, clean_event, exception_renderer, json_line
from tradeops.numeric_input import parse_count
from tradeops.problems import problem_bytes, problem_parts
from tradeops.settings import Settings

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

ACCESS_COMPONENT = "tradeops.access"
access_log = structlog.get_logger(component=ACCESS_COMPONENT)


def _access_line_by_structlog(
    method: str, path: str, route: str, status: int, duration_ms: float
) -> None:
    access_log.info(
        "request", method=method, path=path, route=route, status=status, duration_ms=duration_ms
    )


class JsonAccessLines:
    """The access line as configure_logging's JSON lines render it (the same fields, order,
    cleaning and writer; tests/unit/test_log_records.py compares them), rendered here:
    structlog's processor chain, general for any line, took 12.9 µs a line, this 7.4 µs
    (timeit, the settings of bench/stack_cost.py)."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream  # None: stdout as it is when a line is written

    def __call__(self, method: str, path: str, route: str, status: int, duration_ms: float) -> None:
        if not structlog.is_configured():  # reset (tests): structlog's defaults decide
            _access_line_by_structlog(method, path, route, status, duration_ms)
            return
        event: dict[str, Any] = {
            "component": ACCESS_COMPONENT,
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "duration_ms": duration_ms,
            "event": "request",
        }
        for key, value in structlog.contextvars.get_contextvars().items():
            event.setdefault(key, value)  # as structlog's merge_contextvars
        event["level"] = "info"
        event["timestamp"] = (
            datetime.datetime.now(tz=datetime.UTC).isoformat().replace("+00:00", "Z")
        )
        line = json_line(clean_event(None, "info", event)) + "\n"
        stream = self.stream or sys.stdout
        stream.write(line)
        stream.flush()


def _no_access_line(method: str, path: str, route: str, status: int, duration_ms: float) -> None:
    """The log level is above info: structlog's filtering logger would drop the line."""


# How RequestContextMiddleware writes its access line: configure_logging chooses.
_access_line: Callable[[str, str, str, int, float], None] = _access_line_by_structlog


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
    global _access_line
    _access_line = (
        _no_access_line
        if level > logging.INFO
        else JsonAccessLines(stream)
        if json_lines
        else _access_line_by_structlog
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
        # Each (method, route, status)'s counter and histogram, found once: `labels()` checks
        # and locks on every call, a tenth of the request context's own cost.
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """One request answered: counted, and its latency observed."""
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            labels = (method, route, str(status))
            series = self._series[key] = (
                self.requests.labels(*labels),
                self.latency.labels(*labels),
            )
        series[0].inc()
        series[1].observe(seconds)

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
        try:
            async with in_background(_refresh_pool_gauge(gauge, db)):
                yield
        finally:
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


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    # Unmatched paths are one label, so a scanner cannot blow up the metric's cardinality.
    return path if isinstance(path, str) else "<unmatched>"


class RequestContextMiddleware:
    """What every request passes first, in one layer: its id in and out, bound to every log
    line; the caps on its header fields (431) and body (413), as problem documents; one
    access line and the metrics when it ends.

    One layer rather than one per concern: each layer is a coroutine frame that every
    resumption of the request passes through, and a wrapper of `send`."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        *,
        max_header_bytes: int,
        max_body_bytes: int,
        larger_bodies: Mapping[str, int] | None = None,
        access_log_enabled: bool = True,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.larger_bodies = dict(larger_bodies or {})  # exact paths allowed a larger body
        self.access_log_enabled = access_log_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = _RequestHead(scope["headers"])
        incoming = head.request_id
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
        if scope["path"].startswith("/api/") or head.authorization:
            # API answers are a caller's data or tokens (RFC 6749 5.1): never cache them.
            extra_headers.append((b"cache-control", b"no-store"))

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message["headers"] = [*message.get("headers", []), *extra_headers]
            await send(message)

        try:
            await self._limited(scope, receive, send_with_request_id, head)
        except Exception as error:
            await answer_error(scope, send_with_request_id, error, response_started)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            method = scope["method"]
            self.metrics.observe(method, route, status, elapsed)
            if self.access_log_enabled:
                _access_line(method, scope["path"], route, status, round(elapsed * 1000, 2))
            structlog.contextvars.clear_contextvars()

    def _limited(
        self, scope: Scope, receive: Receive, send: Send, head: _RequestHead
    ) -> Awaitable[None]:
        """The app, or the refusal of a request past a cap: the header fields first (before
        anyone parses them), then the declared body, then a body counted as it arrives."""
        if head.header_bytes > self.max_header_bytes:
            return refuse_headers(scope, send, self.max_header_bytes)
        limit = self.larger_bodies.get(scope["path"], self.max_body_bytes)
        declared = parse_count(head.content_length or "", max_digits=20)
        if declared is not None and declared > limit:
            return refuse_body(scope, send, limit)
        return self.app(scope, counting(receive, limit), send)


class _RequestHead:
    """What the request context reads from the header fields (the first of each name), in
    one pass over them."""

    __slots__ = ("authorization", "content_length", "header_bytes", "request_id")

    def __init__(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.request_id: str | None = None
        self.content_length: str | None = None
        self.authorization: bytes | None = None
        size = 0
        for name, value in headers:
            # The header fields' bytes as sent: `name: value\r\n` each.
            size += len(name) + len(value) + 4
            if name == b"x-request-id":
                if self.request_id is None:
                    self.request_id = value.decode("latin-1")
            elif name == b"content-length":
                if self.content_length is None:
                    self.content_length = value.decode("latin-1")
            elif name == b"authorization" and self.authorization is None:
                self.authorization = value
        self.header_bytes = size


def counting(receive: Receive, limit: int) -> Receive:
    """`receive`, refusing a body past `limit` as it arrives (a chunked body has no length up
    front). The exception is an HTTPException, so the framework renders it through the
    problem handler."""
    received = 0

    async def counting_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
        return message

    return counting_receive


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


async def refuse_body(scope: Scope, send: Send, limit: int) -> None:
    """413 for a request body declared over the limit, before anything parses it."""
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
