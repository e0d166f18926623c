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
    home: Path = Path(".tradeops")
    host: str = "127.0.0.1"
    port: int = 8000

    log_level: str = "INFO"
    log_format: Literal["json", "console"] | None = None  # None: console in dev, JSON elsewhere
    access_log: bool = True

    pool_size: int = 10
    pool_max_overflow: int = 10
    pool_timeout_seconds: float = 10.0
    statement_timeout_ms: int = 5000
    db_retry_attempts: int = 3

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
    expiry_batch: int = Field(default=1000, ge=1)
    # A check still `doing` this long after it started is taken for lost (a worker that lost
    # the database while finishing it keeps heartbeating) and is put back in the queue. Far
    # above what a check takes (its statements time out after statement_timeout_ms).
    risk_check_overdue_seconds: float = Field(default=60.0, gt=0)

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
