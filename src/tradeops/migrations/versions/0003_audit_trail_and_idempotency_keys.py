"""audit trail and idempotency keys

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

The audit trail: append-only (a trigger refuses UPDATE, DELETE and TRUNCATE for everyone;
the application role may only INSERT and SELECT), each event chained by SHA-256 to the
previous event of its stream. The chain is computed by a trigger from a per-stream head row,
whose lock orders writers of one stream while writers of different streams never wait.
Idempotency keys keep the first response to a retried request.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The hash covers every field, each length-prefixed so no value can imitate a separator.
# tradeops.audit.chain computes the same in Python, from the same text renderings.
AUDIT_SQL = r"""
CREATE FUNCTION audit_event_hash(
    prev_hash text, stream text, seq integer, at timestamptz, actor text, api_key_id bigint,
    request_id text, action text, entity text, entity_id text, before jsonb, after jsonb
) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(string_agg(length(f) || ':' || f || ';', '' ORDER BY n), 'UTF8')), 'hex')
    FROM unnest(ARRAY[
        prev_hash, stream, seq::text,
        to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        actor, COALESCE(api_key_id::text, ''), COALESCE(request_id, ''), action, entity,
        entity_id, COALESCE(before::text, 'null'), COALESCE(after::text, 'null')
    ]) WITH ORDINALITY AS fields(f, n)
$$;

CREATE TABLE audit_stream_heads (
    stream text CONSTRAINT pk_audit_stream_heads PRIMARY KEY,
    seq integer NOT NULL,
    hash text NOT NULL
);

CREATE FUNCTION audit_events_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head audit_stream_heads%ROWTYPE;
BEGIN
    NEW.at := COALESCE(NEW.at, now());
    SELECT * INTO head FROM audit_stream_heads WHERE stream = NEW.stream FOR UPDATE;
    IF FOUND THEN
        NEW.seq := head.seq + 1;
        NEW.prev_hash := head.hash;
    ELSE
        NEW.seq := 1;
        NEW.prev_hash := repeat('0', 64);
    END IF;
    NEW.hash := audit_event_hash(
        NEW.prev_hash, NEW.stream, NEW.seq, NEW.at, NEW.actor, NEW.api_key_id, NEW.request_id,
        NEW.action, NEW.entity, NEW.entity_id, NEW.before, NEW.after);
    INSERT INTO audit_stream_heads (stream, seq, hash) VALUES (NEW.stream, NEW.seq, NEW.hash)
        ON CONFLICT (stream) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash;
    RETURN NEW;
END $$;

CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_chain();

CREATE FUNCTION audit_events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();

CREATE FUNCTION tradeops_actor() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT 'user:' || tradeops_user_id()
        || COALESCE('/key:' || NULLIF(current_setting('tradeops.api_key_id', true), ''), '')
$$;
"""

POLICIES_AND_GRANTS = """
CREATE POLICY audit_events_read ON audit_events FOR SELECT
    USING (current_user <> 'tradeops_app' OR tradeops_role() IN ('risk', 'admin', 'system'));
CREATE POLICY audit_events_append ON audit_events FOR INSERT
    WITH CHECK (current_user <> 'tradeops_app' OR tradeops_user_id() IS NOT NULL);
CREATE POLICY audit_checkpoints_read ON audit_checkpoints FOR SELECT
    USING (current_user <> 'tradeops_app' OR tradeops_role() IN ('risk', 'admin', 'system'));
CREATE POLICY audit_checkpoints_append ON audit_checkpoints FOR INSERT
    WITH CHECK (current_user <> 'tradeops_app' OR tradeops_role() IN ('risk', 'admin', 'system'));
CREATE POLICY audit_stream_heads_chain ON audit_stream_heads FOR ALL
    USING (current_user <> 'tradeops_app' OR tradeops_user_id() IS NOT NULL)
    WITH CHECK (current_user <> 'tradeops_app' OR tradeops_user_id() IS NOT NULL);
CREATE POLICY idempotency_keys_own ON idempotency_keys FOR ALL
    USING (principal = tradeops_actor()) WITH CHECK (principal = tradeops_actor());
-- The system's housekeeping purges expired keys; a DELETE's WHERE needs them visible too.
CREATE POLICY idempotency_keys_purge ON idempotency_keys FOR ALL
    USING (tradeops_role() = 'system');

GRANT SELECT, INSERT ON audit_events, audit_checkpoints TO tradeops_app;
GRANT SELECT, INSERT, UPDATE ON audit_stream_heads TO tradeops_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO tradeops_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO tradeops_app;
"""


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("upto_id", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoints")),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("stream", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("api_key_id", sa.BigInteger(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("entity", sa.Text(), nullable=False),
        sa.Column("entity_id", sa.Text(), nullable=False),
        sa.Column("before", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("after", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("prev_hash", sa.Text(), nullable=False),
        sa.Column("hash", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("stream", "seq", name=op.f("uq_audit_events_stream_seq")),
    )
    op.create_index(
        "ix_audit_events_entity_entity_id", "audit_events", ["entity", "entity_id"], unique=False
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("principal", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.LargeBinary(), nullable=True),
        sa.Column("response_headers", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("principal", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(
        op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"], unique=False
    )
    op.execute(AUDIT_SQL)
    for table in ("audit_events", "audit_checkpoints", "audit_stream_heads", "idempotency_keys"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(POLICIES_AND_GRANTS)


def downgrade() -> None:
    op.execute("DROP FUNCTION audit_events_chain() CASCADE")
    op.execute("DROP FUNCTION audit_events_refuse_change() CASCADE")
    op.execute(
        "DROP FUNCTION audit_event_hash(text, text, integer, timestamptz, text, bigint, text, text, text, text, jsonb, jsonb)"
    )
    op.drop_index(op.f("ix_idempotency_keys_created_at"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_audit_events_entity_entity_id", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_table("audit_checkpoints")
    op.execute("DROP TABLE audit_stream_heads")
    op.execute("DROP FUNCTION tradeops_actor()")
