"""create_app(): routers, middleware, error handlers and the database pool's lifespan."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from tradeops.agents.http import mount_mcp, running_mcp
from tradeops.audit.router import router as audit_router
from tradeops.audit.router import verify_router as audit_verify_router
from tradeops.auth.key_usage import KeyUsage
from tradeops.auth.passwords import PasswordChecks
from tradeops.auth.router import router as auth_router
from tradeops.auth.router import sign_in_router
from tradeops.auth.tokens import TokenService
from tradeops.clients.router import router as clients_router
from tradeops.db.pool import Database
from tradeops.db.replicas import ReadReplica
from tradeops.db.revisions import head_revision
from tradeops.desks.router import router as desks_router
from tradeops.executions.router import router as executions_router
from tradeops.health.router import router as health_router
from tradeops.hot_paths import HotPaths, hot_paths
from tradeops.instruments.router import router as instruments_router
from tradeops.maintenance import running_maintenance
from tradeops.marketdata.router import SNAPSHOTS_PATH
from tradeops.marketdata.router import router as market_data_router
from tradeops.observability import Metrics, RequestContextMiddleware, configure_logging
from tradeops.orders.http import close_event_streams, events_router, install_event_streams
from tradeops.orders.router import router as orders_router
from tradeops.positions.router import router as positions_router
from tradeops.problems import document_problems, install_problem_handlers
from tradeops.risk.router import router as risk_router
from tradeops.route_prefixes import pass_over_routers_by_prefix
from tradeops.settings import Settings, get_settings
from tradeops.ui.install import install_ui
from tradeops.webhooks.router import router as webhooks_router

DESCRIPTION = """
The system of record for trade operations: agents and people submit trade orders, orders pass
a maker-checker approval, and everything lives in PostgreSQL.

Quantities and prices are decimals sent as strings (or JSON numbers) and returned as strings.
Errors are RFC 9457 `application/problem+json` documents with a `request_id`.
"""


def create_app(settings: Settings | None = None, database_url: str | None = None) -> FastAPI:
    settings = settings or get_settings()
    url = database_url or settings.database_url
    if url is None:
        raise RuntimeError(
            "TRADEOPS_DATABASE_URL is not set (use `tradeops dev` for an embedded one)"
        )
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings, url)
        app.state.db = db
        replica = _read_replica(settings, db)
        app.state.read_replica = replica
        password_checks = PasswordChecks(
            settings.password_verify_threads, settings.password_verify_max_waiting
        )
        app.state.password_checks = password_checks
        # What exists now (modules, routes, schemas) lives as long as the process: keep it out
        # of the collector's full passes, which otherwise walk it all. Measured: a full pass
        # during a 1000-price upload took 59 ms with it, 2.5 ms without (bench/README.md).
        gc.collect()
        gc.freeze()
        try:
            async with (
                metrics.watching_pool(db),
                running_maintenance(db, settings),
                app.state.key_usage.flushing(db),
                replica.checking() if replica else contextlib.nullcontext(),
                running_mcp(app),
            ):
                yield
        finally:
            await close_event_streams(app)
            if replica is not None:
                await replica.replica.dispose()
            await db.dispose()
            password_checks.close()

    app = FastAPI(
        title="tradeops",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        # The schema lists every operation and its rules: in prod only if asked for.
        openapi_url="/openapi.json" if settings.serves_docs else None,
        docs_url="/docs" if settings.serves_docs else None,
        redoc_url="/redoc" if settings.serves_docs else None,
        # Our own metrics and access log (observability.py) describe every request; FastAPI's
        # OpenTelemetry instrumentation, unconfigured, would only look for its three
        # providers on each one (5 µs a request on this machine).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.read_replica = None  # the lifespan sets one up when configured
    app.state.key_usage = KeyUsage()
    app.state.tokens = TokenService(settings)
    app.state.migration_head = head_revision()
    install_problem_handlers(app)
    document_problems(app)

    routers = (
        sign_in_router,
        auth_router,
        audit_router,
        audit_verify_router,
        events_router,
        orders_router,
        clients_router,
        instruments_router,
        market_data_router,
        executions_router,
        positions_router,
        risk_router,
        desks_router,
        webhooks_router,
        health_router,
    )
    for router in routers:
        app.include_router(router)
    install_event_streams(app, settings, url)
    install_ui(app)
    mount_mcp(app, settings)
    pass_over_routers_by_prefix(app)
    # Innermost of ours, so that CORS and the request context wrap its answers too.
    app.add_middleware(HotPaths, paths=hot_paths(app))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "If-Match",
                "X-API-Key",
                "X-Request-ID",
            ],
            expose_headers=["ETag", "Location", "X-Request-ID", "Idempotent-Replayed"],
        )
    # Outermost of ours: a refusal (431, 413) has a request id and an access line too.
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_header_bytes=settings.max_header_bytes,
        max_body_bytes=settings.max_body_bytes,
        larger_bodies={SNAPSHOTS_PATH: settings.max_bulk_body_bytes},
        access_log_enabled=settings.access_log,
    )
    return app


def _read_replica(settings: Settings, primary: Database) -> ReadReplica | None:
    """The replica for GET requests (TRADEOPS_READ_DATABASE_URL), if one is configured."""
    if settings.read_database_url is None:
        return None
    reads = Database(
        settings, settings.read_database_url, application_name="tradeops-reads", read_only=True
    )
    return ReadReplica(settings, primary, reads)


def create_app_from_env() -> FastAPI:
    """Entry point for `uvicorn --factory` (one per worker process)."""
    settings = get_settings()
    configure_logging(settings)
    return create_app(settings)
