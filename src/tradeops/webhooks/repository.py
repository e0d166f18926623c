"""The statements over webhook endpoints, deliveries and attempts (the tables' one writer,
besides the outbox trigger of migration 0012 that inserts deliveries).

Endpoint statements run as the application role in the admin's context (row-level security
shows webhooks to admins only). The delivery statements run as the database owner, the
worker's own role: only it may read the secrets to sign with, and write the attempts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text

from tradeops.db.prepared import prepare, query
from tradeops.webhooks.schemas import WebhookOut

# An endpoint as the API shows it (WebhookOut).
_ENDPOINT_COLUMNS = (
    "e.id, e.url, e.event_types, e.created_at, e.disabled_at, u.email AS created_by,"
    " ARRAY(SELECT d.code FROM desks d WHERE d.id = ANY(e.desk_ids) ORDER BY d.code) AS desks"
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery as LIST_DELIVERIES reads it, its attempts as JSON objects (the API's
    DeliveryOut validates them into attempts)."""

    id: int
    webhook_id: str
    event_type: str
    order_id: int
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]
    attempt_log: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery the worker has taken for one attempt: what to send, where, signed how."""

    id: int
    webhook_id: str
    attempt: int
    url: str
    secret: str
    body: str


CREATE_ENDPOINT = query(
    text(
        "WITH e AS (INSERT INTO webhook_endpoints (url, secret, event_types, desk_ids, created_by)"
        " VALUES (:url, :secret, CAST(:event_types AS text[]), CAST(:desk_ids AS bigint[]),"
        "  :created_by)"
        " RETURNING id, url, event_types, desk_ids, created_by, created_at, disabled_at)"
        f" SELECT {_ENDPOINT_COLUMNS} FROM e JOIN users u ON u.id = e.created_by"
    ),
    WebhookOut,
)

LIST_ENDPOINTS = query(
    text(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints e JOIN users u ON u.id = e.created_by"
        " WHERE e.disabled_at IS NULL ORDER BY e.id"
    ),
    WebhookOut,
)

GET_ENDPOINT = query(
    text(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints e JOIN users u ON u.id = e.created_by"
        " WHERE e.id = :id"
    ),
    WebhookOut,
)

# Deleting disables: the endpoint gets nothing more, and what it was still owed is cancelled
# (the worker also cancels what a concurrent event wrote meanwhile: see CANCEL_ORPHANS).
DISABLE_ENDPOINT = query(
    text(
        "WITH e AS (UPDATE webhook_endpoints SET disabled_at = now()"
        " WHERE id = :id AND disabled_at IS NULL"
        " RETURNING id, url, event_types, desk_ids, created_by, created_at, disabled_at),"
        " cancelled AS (UPDATE webhook_deliveries SET status = 'cancelled'"
        " WHERE endpoint_id = :id AND status = 'pending')"
        f" SELECT {_ENDPOINT_COLUMNS} FROM e JOIN users u ON u.id = e.created_by"
    ),
    WebhookOut,
)

LIST_DELIVERIES = query(
    text(
        "SELECT d.id, d.webhook_id, d.event_type, d.order_id, d.status, d.attempts,"
        " CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at,"
        " d.last_status_code, d.last_error, d.created_at, d.delivered_at, d.payload,"
        " COALESCE((SELECT jsonb_agg(jsonb_build_object('attempt', a.attempt, 'at', a.at,"
        "   'status_code', a.status_code, 'error', a.error, 'duration_ms', a.duration_ms)"
        "   ORDER BY a.attempt) FROM webhook_attempts a WHERE a.delivery_id = d.id),"
        "  '[]'::jsonb) AS attempt_log"
        " FROM webhook_deliveries d"
        " WHERE d.endpoint_id = :endpoint_id AND (CAST(:after AS bigint) IS NULL OR d.id < :after)"
        " ORDER BY d.id DESC LIMIT :limit"
    ),
    Delivery,
)

# Deliveries whose endpoint was disabled after the event read it as active: never sent.
CANCEL_ORPHANS = prepare(
    "UPDATE webhook_deliveries d SET status = 'cancelled' FROM webhook_endpoints e"
    " WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND e.id = d.endpoint_id"
    " AND e.disabled_at IS NOT NULL"
)

# The due deliveries, each taken for one attempt: its attempt number counted now and its next
# attempt put a lease away, so a worker that dies mid-attempt leaves it due again after the
# lease (same webhook-id), and two workers never take the same one (SKIP LOCKED).
CLAIM_DUE = query(
    "WITH due AS ("
    " SELECT d.id FROM webhook_deliveries d"
    " WHERE d.status = 'pending' AND d.next_attempt_at <= now()"
    " ORDER BY d.next_attempt_at, d.id LIMIT :batch FOR UPDATE SKIP LOCKED)"
    " UPDATE webhook_deliveries d SET attempts = d.attempts + 1,"
    "  next_attempt_at = now() + make_interval(secs => :lease_seconds)"
    " FROM due, webhook_endpoints e"
    " WHERE d.id = due.id AND e.id = d.endpoint_id AND e.disabled_at IS NULL"
    " RETURNING d.id, d.webhook_id, d.attempts AS attempt, e.url, e.secret,"
    "  d.payload::text AS body",
    Claimed,
)

# One attempt's outcome. The attempt is always kept; the delivery changes only if it is still
# this attempt's (a lease that ran out meanwhile gave it to another worker).
RECORD_ATTEMPT = prepare(
    "WITH attempt AS ("
    " INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, error, duration_ms)"
    " VALUES (:id, :attempt, :at, :status_code, :error, :duration_ms)"
    " ON CONFLICT (delivery_id, attempt) DO NOTHING)"
    " UPDATE webhook_deliveries SET status = :status, last_status_code = :status_code,"
    "  last_error = :error, next_attempt_at = now() + make_interval(secs => :retry_in),"
    "  delivered_at = CASE WHEN :status = 'delivered' THEN now() END"
    " WHERE id = :id AND attempts = :attempt AND status = 'pending'"
    " RETURNING id"
)
