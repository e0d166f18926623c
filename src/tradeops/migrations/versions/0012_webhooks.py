"""webhooks: signed notifications of order events, through an outbox

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27

Admins register endpoints (a URL, the event types, the desks); each order event that maps
to an event type becomes one delivery per matching active endpoint, written by an AFTER
INSERT trigger on order_events: in the transaction that appends the event, whichever code
path appends it, so an event and its notifications commit or roll back together. The worker
delivers them (tradeops.webhooks.delivery) and records every attempt.

Event types, from the order event appended and the order as it is then:
- order.awaiting_approval: the order is REVIEWED and its risk check PASSED, i.e. an approver
  may now approve it; fired by whichever of the review and the passing check comes last
  (both lock the order, so exactly one of them sees the other);
- order.approved, order.rejected, order.expired: events APPROVED, REJECTED, EXPIRED;
- order.filled: every fill, partial or complete (data.status says which);
- order.risk_failed: a risk check that FAILED, or could not run (RISK_CHECK_ERROR).

The trigger function is SECURITY DEFINER (search_path pinned, like end_page_sessions() of
0008): the event's writer (a trader, the risk job) may neither read the endpoints nor write
the outbox. The secret is kept as issued, since signing needs it, but the application role
may only write it, never read it (column grants, like password hashes); the worker reads it
as the database owner. Once a delivery is written the trigger nudges the worker with a
`deliver_webhooks` job, at most one queued (an advisory try-lock, so no writer ever waits on
another); the worker's periodic sweep delivers what a nudge missed and the retries.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENT_TYPES_SQL = (
    "ARRAY['order.awaiting_approval', 'order.approved', 'order.rejected', 'order.expired',"
    " 'order.filled', 'order.risk_failed']::text[]"
)

OUTBOX = r"""
CREATE FUNCTION webhook_event_type(event text, payload jsonb, status text, risk_status text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN event = 'APPROVED' THEN 'order.approved'
        WHEN event = 'REJECTED' THEN 'order.rejected'
        WHEN event = 'EXPIRED' THEN 'order.expired'
        WHEN event IN ('FILLED', 'PARTIALLY_FILLED') THEN 'order.filled'
        WHEN event IN ('RISK_CHECKED', 'RISK_CHECK_ERROR') AND payload ->> 'risk_status' = 'FAILED'
            THEN 'order.risk_failed'
        WHEN event IN ('REVIEWED', 'RISK_CHECKED') AND status = 'REVIEWED'
             AND risk_status = 'PASSED' THEN 'order.awaiting_approval'
    END
$$;

CREATE FUNCTION webhook_instant(at timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS
    $$ SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;

CREATE FUNCTION webhook_outbox_enqueue() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    o orders%ROWTYPE;
    kind text;
    body jsonb;
BEGIN
    IF NOT EXISTS (SELECT FROM webhook_endpoints
                   WHERE disabled_at IS NULL AND NEW.desk_id = ANY(desk_ids)) THEN
        RETURN NULL;  -- the common case costs one probe of a tiny table
    END IF;
    SELECT * INTO o FROM orders WHERE id = NEW.order_id;
    IF NOT FOUND THEN
        -- Only a writer without a context whose role is bound by row-level security (never
        -- the application, nor a superuser) cannot see the order; the event is not held up.
        RAISE WARNING 'webhooks: order % not visible; event % not sent', NEW.order_id, NEW.type;
        RETURN NULL;
    END IF;
    kind := webhook_event_type(NEW.type, NEW.payload, o.status, o.risk_status);
    IF kind IS NULL THEN
        RETURN NULL;
    END IF;
    -- Standard Webhooks' body: type, timestamp, data. Decimals as strings, as the API has them.
    SELECT jsonb_build_object(
        'type', kind,
        'timestamp', webhook_instant(NEW.at),
        'data', jsonb_build_object(
            'order_id', o.id, 'desk', d.code, 'client_id', c.external_id, 'symbol', i.symbol,
            'side', o.side, 'order_type', o.order_type, 'time_in_force', o.time_in_force,
            'quantity', trim_scale(o.quantity)::text, 'price', trim_scale(o.price)::text,
            'currency', o.currency, 'status', o.status, 'risk_status', o.risk_status,
            'risk_reasons', o.risk_reasons,
            'filled_quantity', trim_scale(o.filled_quantity)::text,
            'avg_fill_price', trim_scale(o.avg_fill_price)::text, 'version', o.version,
            'event', jsonb_build_object('seq', NEW.seq, 'type', NEW.type, 'actor', NEW.actor,
                                        'at', webhook_instant(NEW.at), 'payload', NEW.payload)))
    INTO body
    FROM desks d, clients c, instruments i
    WHERE d.id = o.desk_id AND c.id = o.client_id AND i.id = o.instrument_id;
    INSERT INTO webhook_deliveries (endpoint_id, event_type, order_id, event_seq, desk_id, payload)
    SELECT e.id, kind, NEW.order_id, NEW.seq, NEW.desk_id, body FROM webhook_endpoints e
    WHERE e.disabled_at IS NULL AND NEW.desk_id = ANY(e.desk_ids) AND kind = ANY(e.event_types)
    ORDER BY e.id
    ON CONFLICT (endpoint_id, order_id, event_seq) DO NOTHING;
    IF FOUND AND pg_try_advisory_xact_lock(hashtext('tradeops.webhook_nudge'))
       AND NOT EXISTS (SELECT FROM procrastinate_jobs
                       WHERE queueing_lock = 'deliver_webhooks' AND status = 'todo') THEN
        BEGIN
            PERFORM procrastinate_defer_jobs_v1(ARRAY[ROW(
                'webhooks', 'deliver_webhooks', 0, NULL, 'deliver_webhooks', '{}'::jsonb,
                NULL)::procrastinate_job_to_defer_v1]);
        EXCEPTION WHEN OTHERS THEN
            NULL;  -- a nudge is an optimisation: the periodic sweep delivers without it
        END;
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION webhook_outbox_enqueue() FROM PUBLIC;

CREATE TRIGGER order_events_webhooks AFTER INSERT ON order_events
    FOR EACH ROW EXECUTE FUNCTION webhook_outbox_enqueue();
"""

# Admins (and the system) only; the owner (the worker, the trigger) passes the first test.
ADMINS = "current_user <> 'tradeops_app' OR tradeops_role() IN ('admin', 'system')"

POLICIES_AND_GRANTS = f"""
ALTER TABLE webhook_endpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_endpoints FORCE ROW LEVEL SECURITY;
ALTER TABLE webhook_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_deliveries FORCE ROW LEVEL SECURITY;
ALTER TABLE webhook_attempts ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_attempts FORCE ROW LEVEL SECURITY;
CREATE POLICY webhook_endpoints_admin ON webhook_endpoints FOR ALL
    USING ({ADMINS}) WITH CHECK ({ADMINS});
CREATE POLICY webhook_deliveries_admin ON webhook_deliveries FOR ALL
    USING ({ADMINS}) WITH CHECK ({ADMINS});
CREATE POLICY webhook_attempts_admin ON webhook_attempts FOR SELECT USING ({ADMINS});
GRANT SELECT (id, url, event_types, desk_ids, created_by, created_at, disabled_at),
    INSERT (url, secret, event_types, desk_ids, created_by), UPDATE (disabled_at)
    ON webhook_endpoints TO tradeops_app;
GRANT SELECT, UPDATE (status) ON webhook_deliveries TO tradeops_app;
GRANT SELECT ON webhook_attempts TO tradeops_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO tradeops_app;
"""


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("event_types", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("desk_ids", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("created_by", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "url ~ '^https?://[^\\s]+$' AND length(url) <= 2000",
            name=op.f("ck_webhook_endpoints_url"),
        ),
        sa.CheckConstraint(
            "secret ~ '^whsec_[A-Za-z0-9+/]{32,88}={0,2}$'",
            name=op.f("ck_webhook_endpoints_secret"),
        ),
        sa.CheckConstraint(
            f"cardinality(event_types) > 0 AND event_types <@ {EVENT_TYPES_SQL}",
            name=op.f("ck_webhook_endpoints_event_types"),
        ),
        sa.CheckConstraint("cardinality(desk_ids) > 0", name=op.f("ck_webhook_endpoints_desk_ids")),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_webhook_endpoints_created_by_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "webhook_id",
            sa.Text(),
            server_default=sa.text("'msg_' || replace(gen_random_uuid()::text, '-', '')"),
            nullable=False,
        ),
        sa.Column("endpoint_id", sa.BigInteger(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("order_id", sa.BigInteger(), nullable=False),
        sa.Column("event_seq", sa.Integer(), nullable=False),
        sa.Column("desk_id", sa.BigInteger(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "webhook_id ~ '^msg_[0-9a-f]{32}$'", name=op.f("ck_webhook_deliveries_webhook_id")
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed', 'cancelled')",
            name=op.f("ck_webhook_deliveries_status"),
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_webhook_deliveries_attempts")),
        sa.CheckConstraint(
            "(status = 'delivered') = (delivered_at IS NOT NULL)",
            name=op.f("ck_webhook_deliveries_delivered"),
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("webhook_id", name=op.f("uq_webhook_deliveries_webhook_id")),
        sa.UniqueConstraint(
            "endpoint_id",
            "order_id",
            "event_seq",
            name=op.f("uq_webhook_deliveries_endpoint_id_order_id_event_seq"),
        ),
    )
    op.create_index(
        "ix_webhook_deliveries_endpoint_id_id", "webhook_deliveries", ["endpoint_id", "id"]
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("delivery_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("delivery_id", "attempt", name=op.f("pk_webhook_attempts")),
    )
    op.execute(OUTBOX)
    op.execute(POLICIES_AND_GRANTS)


def downgrade() -> None:
    op.execute("DROP TRIGGER order_events_webhooks ON order_events")
    op.execute(
        "DROP FUNCTION webhook_outbox_enqueue(), webhook_instant(timestamptz),"
        " webhook_event_type(text, jsonb, text, text)"
    )
    op.drop_table("webhook_attempts")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_endpoint_id_id", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
