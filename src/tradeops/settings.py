"""Every knob of tradeops, read from TRADEOPS_* environment variables (or a .env file)."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET_KEY = "dev-only-insecure-secret-key-change-me-0000"
DEFAULT_AUDIT_KEY = "dev-only-insecure-audit-key-change-me-00000"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TRADEOPS_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    env: Literal["dev", "test", "prod"] = "dev"
    database_url: str | None = Field(
        default=None,
        description="postgresql://user:pass@host:port/db; unset starts an embedded PostgreSQL",
    )
    # Where each process LISTENs for order events (one connection of its own). LISTEN needs
    # a session: behind PgBouncer in transaction mode, point this at PostgreSQL itself.
    # Unset: worker_listen_database_url (the worker's direct URL), else database_url.
    listen_database_url: str | None = Field(
        default=None,
        description="Unset: TRADEOPS_WORKER_LISTEN_DATABASE_URL, else TRADEOPS_DATABASE_URL",
    )
    home: Path = Path(".tradeops")
    host: str = "127.0.0.1"
    port: int = 8000

    log_level: str = "INFO"
    log_format: Literal["json", "console"] | None = None  # None: console in dev, JSON elsewhere
    access_log: bool = True

    # Connections per process, at most pool_size + overflow. Few: a request holds one for a
    # statement or a short transaction, and connections beyond two or three busy ones per
    # PostgreSQL core only take turns on its cores (make bench on 2 cores, 6 against 20:
    # the same req/s within noise, steadier tails: GET p99 23-33 ms against 27-63, the
    # portfolio's 58-73 against 92-108; 4 cost the portfolio a fifth of its req/s in two
    # runs of four). Requests waiting for one are served in turn (db/pool.py).
    pool_size: int = 6
    pool_max_overflow: int = 0
    pool_timeout_seconds: float = 10.0
    # Set in every transaction's BEGIN round trip (set_config(..., true)), never at connect:
    # a pooler in transaction mode (PgBouncer) refuses or loses connection-level settings.
    statement_timeout_ms: int = Field(default=5000, ge=0)
    db_retry_attempts: int = 3
    # Reads on a streaming replica (docs/operations.md#read-replicas); None: all on the primary.
    read_database_url: str | None = Field(
        default=None, description="A replica for GET requests (libpq URL, several hosts allowed)"
    )
    # A caller (a user, whichever credential) reads on the primary this long after its last
    # write through this process; a replica lagging more than read_max_lag_seconds at its last
    # check (every read_check_seconds) takes no reads. The validator below ties them.
    read_your_writes_seconds: float = Field(default=5.0, ge=0)
    read_max_lag_seconds: float = Field(default=2.0, ge=0)
    read_check_seconds: float = Field(default=1.0, gt=0)
    # False behind a pooler that cannot keep prepared statements apart (PgBouncer < 1.21, or
    # max_prepared_statements = 0): asyncpg keeps no statement cache and psycopg never
    # prepares, so no statement name reaches another client's server connection.
    db_prepared_statements: bool = True

    # `serve --workers N`: the supervisor kills a worker process that does not answer its
    # health check within this (uvicorn's timeout_worker_healthcheck). A process answers from
    # a thread of its own as soon as it starts, also while importing the app and starting up.
    serve_healthcheck_timeout_seconds: int = Field(default=30, ge=1)
    # Where the worker processes of `serve --workers N` (N > 1) keep their Prometheus
    # metrics, so that one scrape of any of them counts all; wiped when serving starts.
    # None: a temporary directory, removed when serving stops.
    metrics_dir: Path | None = None

    max_body_bytes: int = 64 * 1024
    # Request header fields (names and values) past this are a 431; see header_limits.py.
    max_header_bytes: int = Field(default=16 * 1024, ge=4 * 1024)
    max_bulk_body_bytes: int = 2 * 1024 * 1024  # bulk uploads: market data snapshots
    price_max_decimals: int = Field(default=6, ge=0, le=6)
    page_size_default: int = 50

    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)
    audit_key: SecretStr = SecretStr(DEFAULT_AUDIT_KEY)
    token_ttl_minutes: int = 30
    ui_session_minutes: int = Field(default=480, ge=1, description="Signed-in page session")
    # Approving an order above this notional (in the order's currency) on the pages takes a
    # second, confirming submit: a fat finger that passed the checks still gets a second look.
    ui_confirm_notional: Decimal = Field(default=Decimal(1_000_000), gt=0)
    jwt_issuer: str = "tradeops"
    jwt_audience: str = "tradeops-api"
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_jwks_file: Path | None = None
    maintenance: bool = True
    audit_checkpoint_seconds: float = 60.0
    audit_settle_seconds: float = 300.0
    idempotency_keep_hours: int = 24
    # Housekeeping deletes (expired idempotency keys, finished jobs) in transactions of at most
    # purge_batch rows each, and at most purge_round_limit rows per round: no statement or
    # transaction grows with a backlog; a backlog shrinks by purge_round_limit per round.
    purge_batch: int = Field(default=1000, ge=1)
    purge_round_limit: int = Field(default=100_000, ge=1)
    # Finished jobs are kept this long after they finished (a succeeded job's args and events
    # answer "was this order checked, when?"); failed, cancelled and aborted ones longer, as
    # the evidence people read when something went wrong.
    job_retention_hours: int = Field(default=72, ge=1)
    job_failed_retention_hours: int = Field(default=720, ge=1)
    # Audit verification reads this many events per short read transaction.
    audit_verify_batch: int = Field(default=5000, ge=1, le=100_000)
    login_max_failures: int = Field(default=5, ge=1)
    login_lockout_seconds: int = Field(default=30, ge=1)
    # Failures are forgotten this long after the last one (so the throttle table stays
    # small); longer than the longest lock (15 minutes), so a lock always runs its course.
    login_failure_window_seconds: int = Field(default=3600, ge=900)
    # Password checks (argon2id, ~0.5 s of CPU each) run in their own threads: None means one
    # per CPU. Beyond the threads, at most this many sign-ins wait; the rest get 503.
    password_verify_threads: int | None = Field(default=None, ge=1)
    password_verify_max_waiting: int = Field(default=16, ge=0)
    cors_origins: list[str] = Field(default_factory=list)
    # GET /metrics wants `Authorization: Bearer <token>` when set; in prod without one it is off.
    metrics_token: SecretStr | None = None
    # /docs, /redoc and /openapi.json; None: on, except in prod.
    docs_enabled: bool | None = None
    demo_password: SecretStr | None = None
    # The pre-trade price band where neither the desk nor the client sets one.
    fat_finger_pct: Decimal = Field(default=Decimal(10), gt=0, le=100)
    # Job workers: a worker that stops heartbeating for worker_stalled_seconds is taken for
    # dead and its running jobs are retried (checked every ~10 s), so a crashed worker's risk
    # checks resume within about worker_stalled_seconds + 10 s.
    worker_heartbeat_seconds: float = Field(default=5.0, gt=0)
    worker_stalled_seconds: float = Field(default=20.0, gt=0)
    # An order still awaiting its risk check this long, with no job queued or running for it,
    # gets its check deferred again (at most risk_sweep_batch orders per sweep).
    risk_sweep_after_seconds: float = Field(default=60.0, gt=0)
    risk_sweep_batch: int = Field(default=100, ge=1)
    # The expiry sweep (every 30 s) expires due orders this many per transaction.
    expiry_batch: int = Field(default=500, ge=1)
    # A check still `doing` this long after it started is taken for lost (a worker that lost
    # the database while finishing it keeps heartbeating) and is put back in the queue. Far
    # above what a check takes (its statements time out after statement_timeout_ms).
    risk_check_overdue_seconds: float = Field(default=60.0, gt=0)
    # The order event stream (GET /api/v1/orders/events/stream): a comment line this often
    # when nothing else was sent, so proxies keep the connection and clients see it is alive.
    stream_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)
    # Open event streams per person or API key, per API process (more: 429).
    streams_per_principal: int = Field(default=5, ge=1)
    # Webhooks (tradeops.webhooks): one POST may take webhook_timeout_seconds; a failed one is
    # retried after webhook_backoff_seconds * 2^(attempt-1) (±25% jitter, at most an hour),
    # webhook_max_attempts times in all (the default keeps trying for about six hours).
    # At most webhook_batch deliveries are sent at once per worker run.
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=30)
    webhook_backoff_seconds: float = Field(default=5.0, gt=0)
    webhook_max_attempts: int = Field(default=15, ge=1, le=100)
    webhook_batch: int = Field(default=50, ge=1, le=500)
    # Plain http:// endpoint URLs; None: allowed except in prod.
    webhook_allow_http: bool | None = None
    # A worker learns of new jobs by LISTEN on this URL, which must reach PostgreSQL directly
    # (a pooler in transaction mode drops LISTEN); None: database_url. Without a direct URL
    # set worker_listen off: the worker then looks for jobs every worker_poll_seconds.
    worker_listen_database_url: str | None = None
    worker_listen: bool = True
    worker_poll_seconds: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _heartbeats_outpace_the_stall_timeout(self) -> Settings:
        # A live worker must heartbeat several times within the timeout, or a slow beat
        # would have its running jobs retried under it.
        if self.worker_stalled_seconds < 2 * self.worker_heartbeat_seconds:
            raise ValueError(
                "TRADEOPS_WORKER_STALLED_SECONDS must be at least twice"
                " TRADEOPS_WORKER_HEARTBEAT_SECONDS"
            )
        return self

    @model_validator(mode="after")
    def _own_writes_outlast_the_replica_lag(self) -> Settings:
        # A replica takes reads on a check at most two intervals old that found it within the
        # lag allowed: a write is there once both have passed, and only then may its writer
        # read there again (db/replicas.py).
        least = self.read_max_lag_seconds + 2 * self.read_check_seconds
        if self.read_your_writes_seconds < least:
            raise ValueError(
                "TRADEOPS_READ_YOUR_WRITES_SECONDS must be at least"
                " TRADEOPS_READ_MAX_LAG_SECONDS + 2 * TRADEOPS_READ_CHECK_SECONDS"
            )
        return self

    @model_validator(mode="after")
    def _no_default_secrets_in_production(self) -> Settings:
        if self.env == "prod":
            for name, default in (
                ("secret_key", DEFAULT_SECRET_KEY),
                ("audit_key", DEFAULT_AUDIT_KEY),
            ):
                value = getattr(self, name).get_secret_value()
                if value == default or len(value) < 32:
                    raise ValueError(
                        f"TRADEOPS_{name.upper()} must be set to a secret of 32+ characters in prod"
                    )
            token = self.metrics_token
            if token is not None and len(token.get_secret_value()) < 32:
                raise ValueError("TRADEOPS_METRICS_TOKEN must be 32+ characters in prod")
        return self

    @property
    def serves_docs(self) -> bool:
        return self.docs_enabled if self.docs_enabled is not None else self.env != "prod"

    @property
    def webhooks_may_use_http(self) -> bool:
        return (
            self.webhook_allow_http if self.webhook_allow_http is not None else self.env != "prod"
        )

    def order_events_listen_url(self, database_url: str) -> str:
        """Where this process LISTENs for order events: a direct URL when one is set (the
        worker's will do: both need a session, which a transaction-mode pooler doesn't keep)."""
        return self.listen_database_url or self.worker_listen_database_url or database_url

    @property
    def metrics_public(self) -> bool:
        """Outside prod, metrics without a token set are anyone's to read (a developer's)."""
        return self.metrics_token is None and self.env != "prod"

    @property
    def log_renderer(self) -> Literal["json", "console"]:
        if self.log_format is not None:
            return self.log_format
        return "console" if self.env == "dev" else "json"

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"


@lru_cache
def get_settings() -> Settings:
    return Settings()
