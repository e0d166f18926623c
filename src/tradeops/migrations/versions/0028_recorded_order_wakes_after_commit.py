"""A new order recorded in a transaction wakes its listeners after the commit, too

Revision ID: 0028
Revises: 0027
Create Date: 2026-11-28

Migration 0027 took the NOTIFY out of POST /orders in one statement. A new order recorded
in a transaction (an Idempotency-Key; the MCP tool `submit_order`, which agents use) still
notified at its commit, and so still committed one flush at a time beside any other
notifying writer.

`tradeops_record_order` is intake's statement (orders.repository.SUBMIT_ORDER) run with
`tradeops.wake_after_commit` on: the order's event and its risk job are inserted without
a NOTIFY, and the caller hands the same wake-ups to the transaction, which sends them once
it has committed (db/uow.py). The setting is back to what it was as soon as the statement
has run, because PostgreSQL decides whether to queue an AFTER trigger (its WHEN) when the
row is written. So every later statement of the same transaction notifies at the commit as
before, and the promise covers exactly the rows this statement writes.

The function runs with its caller's rights, inside the caller's transaction, under the
context the transaction set: row-level security and every trigger apply as before. The
statement below is the one orders.repository.record_order_function() writes from
SUBMIT_ORDER; tests/integration/test_wakeups_after_commit.py holds the installed function
equal to it.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0028"
down_revision: str | None = "0027"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = (
    "tradeops_record_order(text, text, text, text, text, timestamptz, numeric, numeric, text,"
    " bigint, bigint, boolean, bigint[], text, text, text, text, text)"
)

# The order's values, the caller's (who made it, with which key, for which desks), the
# event's and the audit entry's, and where its risk check is queued: SUBMIT_ORDER's
# parameters, each `in_` and its name.
RECORD_ORDER = """
CREATE FUNCTION tradeops_record_order(
    in_client_id text, in_symbol text, in_side text, in_order_type text,
    in_time_in_force text, in_expire_at timestamptz, in_quantity numeric, in_price numeric,
    in_client_order_id text, in_created_by bigint, in_created_by_key_id bigint,
    in_all_desks boolean, in_desk_ids bigint[], in_event_type text, in_payload text,
    in_action text, in_risk_queue text, in_risk_task text
) RETURNS SETOF tradeops_order_submitted
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    previous text := current_setting('tradeops.wake_after_commit', true);
BEGIN
    -- This statement's triggers send no wake-ups: its caller sends them after the commit.
    PERFORM set_config('tradeops.wake_after_commit', 'on', true);
    RETURN QUERY
WITH refs AS ( SELECT c.id AS client_pk, c.desk_id, c.status AS client_status, d.code AS
desk,  i.id AS instrument_pk, i.currency, i.lot_size, i.tick_size,  i.active AS
instrument_active, COALESCE(CASE WHEN p.currency = i.currency  AND COALESCE(CAST(in_price
AS numeric), last.price) IS NOT NULL THEN (SELECT b.approvals FROM approval_bands b WHERE
b.desk_id = c.desk_id  AND b.min_notional   <= CAST(in_quantity AS numeric) *
COALESCE(CAST(in_price AS numeric), last.price)  ORDER BY b.min_notional DESC LIMIT 1)
ELSE (SELECT max(b.approvals) FROM approval_bands b WHERE b.desk_id = c.desk_id) END, 1)
AS approvals_required FROM (SELECT 1) AS one LEFT JOIN clients c ON c.external_id =
in_client_id LEFT JOIN desks d ON d.id = c.desk_id LEFT JOIN instruments i ON i.symbol =
in_symbol LEFT JOIN desk_approval_policies p ON p.desk_id = c.desk_id LEFT JOIN LATERAL
(SELECT m.price FROM market_snapshots m WHERE m.instrument_id = i.id  ORDER BY m.as_of
DESC LIMIT 1) last ON true), changed AS (INSERT INTO orders (desk_id, client_id,
instrument_id, side, order_type, time_in_force, expire_at, quantity, price, currency,
client_order_id, created_by, created_by_key_id, approvals_required) SELECT desk_id,
client_pk, instrument_pk, CAST(in_side AS text),  CAST(in_order_type AS text),
CAST(in_time_in_force AS text),  CAST(in_expire_at AS timestamptz), CAST(in_quantity AS
numeric),  CAST(in_price AS numeric), currency, CAST(in_client_order_id AS text),  CAST(in_created_by
AS bigint), CAST(in_created_by_key_id AS bigint), approvals_required FROM refs WHERE
client_status = 'ACTIVE' AND instrument_active  AND (CAST(in_all_desks AS boolean) OR
desk_id = ANY(CAST(in_desk_ids AS bigint[])))  AND mod(in_quantity, lot_size) = 0  AND
(in_price IS NULL OR mod(in_price, tick_size) = 0) ON CONFLICT (created_by,
client_order_id) DO NOTHING RETURNING *), changed_event AS (INSERT INTO order_events
(order_id, desk_id, seq, type, payload) SELECT c.id, c.desk_id, c.version, in_event_type,
CAST(in_payload AS jsonb) FROM changed c), changed_audit AS (INSERT INTO audit_events
(stream, action, entity, entity_id, before, after) SELECT 'order' || ':' || c.id::text,
in_action, 'order', c.id::text, NULL, to_jsonb(c) FROM changed c), risk_job AS (SELECT
(procrastinate_defer_jobs_v1(ARRAY[ROW( CAST(in_risk_queue AS varchar), CAST(in_risk_task
AS varchar), 0, 'order:' || n.id, CAST(NULL AS text), jsonb_build_object('order_id',
n.id), CAST(NULL AS timestamptz))::procrastinate_job_to_defer_v1]))[1] AS risk_job_id FROM
changed n) SELECT (ROW(refs.*, n.id, n.status, n.risk_status, n.risk_reasons,
n.filled_quantity, n.expire_at, n.version, n.created_at, n.updated_at,
job.risk_job_id)::tradeops_order_submitted).* FROM refs LEFT JOIN changed n ON true LEFT
JOIN risk_job job ON true;
    -- The later statements of the transaction notify at its commit, as every writer does.
    PERFORM set_config('tradeops.wake_after_commit', COALESCE(previous, ''), true);
END $$;
"""
# The application role runs it in its transactions; nobody else needs to.
GRANTS = f"""
REVOKE ALL ON FUNCTION {SIGNATURE} FROM PUBLIC;
GRANT EXECUTE ON FUNCTION {SIGNATURE} TO tradeops_app;
"""


def upgrade() -> None:
    op.execute(RECORD_ORDER)
    op.execute(GRANTS)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SIGNATURE}")
