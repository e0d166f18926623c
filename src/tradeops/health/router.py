from __future__ import annotations

import asyncio
import hmac
import math
import time
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.security.utils import get_authorization_scheme_param
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, SecretStr
from starlette.exceptions import HTTPException

from tradeops.db.replicas import ReadReplica
from tradeops.health import service
from tradeops.problems import Problem, problem_response
from tradeops.settings import Settings

router = APIRouter(tags=["health"])


def _bears(request: Request, token: SecretStr) -> bool:
    scheme, credential = get_authorization_scheme_param(request.headers.get("Authorization"))
    # Compared in constant time, so the answer's timing does not spell the token out.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credential.encode(), token.get_secret_value().encode()
    )


DB_CHECK_TIMEOUT_SECONDS = 2.0


class Liveness(BaseModel):
    status: str


class ReplicaReadiness(BaseModel):
    """The read replica as its last check (every TRADEOPS_READ_CHECK_SECONDS) found it."""

    status: Literal["ok", "lagging", "unreachable"]
    reads_on: Literal["replica", "primary"]
    role: Literal["replica", "primary"] | None = None
    lag_seconds: float | None = None
    lag_bytes: int | None = None
    checked_seconds_ago: float | None = None


class Readiness(BaseModel):
    status: str
    db: str
    migration: str | None = None
    role: Literal["primary", "replica"] | None = None
    read_replica: ReplicaReadiness | None = None


def _replica_readiness(replica: ReadReplica) -> ReplicaReadiness:
    state = replica.state
    ago = round(time.monotonic() - state.checked_at, 3) if state.checked_at else None
    reads_on: Literal["replica", "primary"] = "replica" if replica.for_reads() else "primary"
    if not state.reachable:
        return ReplicaReadiness(status="unreachable", reads_on=reads_on, checked_seconds_ago=ago)
    lag = state.lag_seconds
    return ReplicaReadiness(
        status="ok" if reads_on == "replica" else "lagging",
        reads_on=reads_on,
        role="replica" if state.role == "replica" else "primary",
        lag_seconds=None if lag is None or math.isinf(lag) else round(lag, 3),
        lag_bytes=state.lag_bytes,
        checked_seconds_ago=ago,
    )


def _not_ready(request: Request, detail: str) -> Response:
    """503 not-ready, with why and Retry-After: 5."""
    return problem_response(
        request,
        status=503,
        slug="not-ready",
        title="Not ready",
        detail=detail,
        headers={"Retry-After": "5"},
    )


@router.get("/health/live", response_model=Liveness)
async def live() -> Liveness:
    """The process is up and serving (it does not touch the database)."""
    return Liveness(status="ok")


@router.get(
    "/health/ready",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={503: {"model": Problem}},
)
async def ready(request: Request) -> Readiness | Response:
    """Ready for traffic: the database answers, takes writes (it is not a standby) and its
    schema is at the migrations' head. With a read replica, `read_replica` says how far
    behind it is and where reads go now; a replica that is down or lagging sends reads to the
    primary and does not make the process unready."""
    try:
        schema = await asyncio.wait_for(
            service.schema_state(request.app.state.db), DB_CHECK_TIMEOUT_SECONDS
        )
    except Exception:
        return _not_ready(request, "The database is not reachable.")
    if schema.standby:
        return _not_ready(
            request,
            "The database is a standby and takes no writes: point TRADEOPS_DATABASE_URL"
            " at the primary (several hosts with target_session_attrs=read-write fail over).",
        )
    head = request.app.state.migration_head
    if schema.revision != head:
        return _not_ready(
            request, f"Schema at {schema.revision}, code at {head}: run `tradeops db upgrade`."
        )
    replica: ReadReplica | None = request.app.state.read_replica
    return Readiness(
        status="ok",
        db="reachable",
        migration=schema.revision,
        role="primary",
        read_replica=_replica_readiness(replica) if replica is not None else None,
    )


@router.get(
    "/api/v1/health-check/db",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={503: {"model": Problem}},
)
async def database_check(request: Request) -> Readiness | Response:
    """The database answers a query: `{"status": "ok", "db": "reachable"}`, else 503."""
    try:
        async with asyncio.timeout(DB_CHECK_TIMEOUT_SECONDS):
            await service.ping(request.app.state.db)
    except Exception:
        return problem_response(
            request,
            status=503,
            slug="database-unreachable",
            title="Database unreachable",
            detail="The database did not answer.",
            headers={"Retry-After": "5"},
        )
    return Readiness(status="ok", db="reachable")


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this process: for the bearer of TRADEOPS_METRICS_TOKEN when one
    is set; in prod without one, not served (they show routes, load and the pool's state)."""
    settings: Settings = request.app.state.settings
    if not settings.metrics_public:
        if settings.metrics_token is None:
            raise HTTPException(404, "Not Found")
        if not _bears(request, settings.metrics_token):
            return problem_response(
                request,
                status=401,
                slug="unauthenticated",
                title="Authentication required",
                detail="The metrics need the metrics token as a bearer token.",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
