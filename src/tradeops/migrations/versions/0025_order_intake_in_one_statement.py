"""POST /orders in one statement

Revision ID: 0025
Revises: 0024
Create Date: 2026-11-28

Issue 15: "a write needs at most two" round trips. A new order took four: BEGIN,
authenticate, intake's statement, COMMIT. `tradeops_submit_order` is the order's intake in
one statement, as tradeops_read_order (0019) is the order's read: it authenticates with the
same function every request's first statement calls (which switches to the application
role and publishes the caller's context, transaction-local), refuses a caller the
application does not allow to submit orders (the roles and the key scope it is given, from
auth.permissions, so the rule is written once), and only then runs intake's statement
(orders.repository.SUBMIT_ORDER: the order, its event, its audit entry and its risk job),
under row-level security, with the caller's id, key and desks. Sent alone, the statement is
its own transaction: the context dies with it, on a pooled or PgBouncer'd connection alike.

The statement below is the one orders.repository.submit_order_function() writes from
SUBMIT_ORDER; tests/integration/test_one_statement_intake.py holds the installed function
equal to it, so a change to SUBMIT_ORDER comes with a migration that installs it again.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# in_prefix/in_hash an API key's prefix and hash, or NULL and in_user_id/in_email a person's
# id and e-mail; in_app_role the application role, in_request_id the request id (as
# tradeops_read_order's $1..$6). in_roles and in_scope: who may submit (a role among them;
# a key with the scope); in_lock_timeout_ms: the longest wait for a lock. Then the order's
# values and SUBMIT_ORDER's constants. One row when the credentials name a principal:
# `caller`, and `submitted` (NULL when the caller may not submit orders: nothing was
# written).
SUBMIT_ORDER = """
CREATE TYPE tradeops_order_submitted AS (
    client_pk bigint, desk_id bigint, client_status text, desk text, instrument_pk bigint,
    currency text, lot_size numeric, tick_size numeric, instrument_active boolean,
    approvals_required integer, id bigint, status text, risk_status text, risk_reasons jsonb,
    filled_quantity numeric, expire_at timestamptz, version integer, created_at timestamptz,
    updated_at timestamptz, risk_job_id bigint
);

CREATE FUNCTION tradeops_submit_order(
    in_prefix text, in_hash text, in_user_id bigint, in_email text, in_app_role text,
    in_request_id text, in_roles text[], in_scope text, in_lock_timeout_ms integer,
    in_client_id text, in_symbol text, in_side text, in_order_type text,
    in_time_in_force text, in_expire_at timestamptz, in_quantity numeric, in_price numeric,
    in_client_order_id text, in_event_type text, in_payload text, in_action text,
    in_risk_queue text, in_risk_task text
) RETURNS TABLE (caller tradeops_principal, submitted tradeops_order_submitted)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    who tradeops_principal;
BEGIN
    SELECT * INTO who FROM tradeops_authenticate(
        in_prefix, in_hash, in_user_id, in_email, in_app_role, in_request_id);
    IF NOT FOUND THEN
        RETURN;  -- no principal: nothing is written
    END IF;
    IF NOT (who.role = ANY(in_roles) AND (who.scopes IS NULL OR in_scope = ANY(who.scopes)))
    THEN
        RETURN QUERY SELECT who, NULL::tradeops_order_submitted;  -- may not: nothing written
        RETURN;
    END IF;
    -- Sent alone, the statement has no BEGIN to carry its time limit: waiting for a lock
    -- (the usual way a write stalls) ends here, in the server, past in_lock_timeout_ms,
    -- with nothing written.
    PERFORM set_config('lock_timeout', in_lock_timeout_ms::text, true);
    -- A statement of its own, after the switch: it runs as the application role, with the
    -- caller's context, so row-level security and the triggers apply to all it writes.
    RETURN QUERY
WITH refs AS ( SELECT c.id AS client_pk, c.desk_id, c.status AS client_status, d.code AS
desk,  i.id AS instrument_pk, i.currency, i.lot_size, i.tick_size,  i.active AS
instrument_active, COALESCE(CASE WHEN p.currency = i.currency  AND COALESCE(CAST(in_price AS
numeric), last.price) IS NOT NULL THEN (SELECT b.approvals FROM approval_bands b WHERE
b.desk_id = c.desk_id  AND b.min_notional   <= CAST(in_quantity AS numeric) *
COALESCE(CAST(in_price AS numeric), last.price)  ORDER BY b.min_notional DESC LIMIT 1) ELSE
(SELECT max(b.approvals) FROM approval_bands b WHERE b.desk_id = c.desk_id) END, 1) AS
approvals_required FROM (SELECT 1) AS one LEFT JOIN clients c ON c.external_id =
in_client_id LEFT JOIN desks d ON d.id = c.desk_id LEFT JOIN instruments i ON i.symbol =
in_symbol LEFT JOIN desk_approval_policies p ON p.desk_id = c.desk_id LEFT JOIN LATERAL
(SELECT m.price FROM market_snapshots m WHERE m.instrument_id = i.id  ORDER BY m.as_of DESC
LIMIT 1) last ON true), changed AS (INSERT INTO orders (desk_id, client_id, instrument_id,
side, order_type, time_in_force, expire_at, quantity, price, currency, client_order_id,
created_by, created_by_key_id, approvals_required) SELECT desk_id, client_pk, instrument_pk,
CAST(in_side AS text),  CAST(in_order_type AS text), CAST(in_time_in_force AS text), 
CAST(in_expire_at AS timestamptz), CAST(in_quantity AS numeric),  CAST(in_price AS numeric),
currency, CAST(in_client_order_id AS text),  CAST(who.user_id AS bigint), CAST(who.key_id AS
bigint), approvals_required FROM refs WHERE client_status = 'ACTIVE' AND instrument_active 
AND (CAST(who.all_desks AS boolean) OR desk_id = ANY(CAST(who.desk_ids AS bigint[])))  AND
mod(in_quantity, lot_size) = 0  AND (in_price IS NULL OR mod(in_price, tick_size) = 0) ON
CONFLICT (created_by, client_order_id) DO NOTHING RETURNING *), changed_event AS (INSERT
INTO order_events (order_id, desk_id, seq, type, payload) SELECT c.id, c.desk_id, c.version,
in_event_type, CAST(in_payload AS jsonb) FROM changed c), changed_audit AS (INSERT INTO
audit_events (stream, action, entity, entity_id, before, after) SELECT 'order' || ':' ||
c.id::text, in_action, 'order', c.id::text, NULL, to_jsonb(c) FROM changed c), risk_job AS
(SELECT (procrastinate_defer_jobs_v1(ARRAY[ROW( CAST(in_risk_queue AS varchar),
CAST(in_risk_task AS varchar), 0, 'order:' || n.id, CAST(NULL AS text),
jsonb_build_object('order_id', n.id), CAST(NULL AS
timestamptz))::procrastinate_job_to_defer_v1]))[1] AS risk_job_id FROM changed n) SELECT
who, ROW(refs.*, n.id, n.status, n.risk_status, n.risk_reasons, n.filled_quantity,
n.expire_at, n.version, n.created_at, n.updated_at,
job.risk_job_id)::tradeops_order_submitted FROM refs LEFT JOIN changed n ON true LEFT JOIN
risk_job job ON true;
END $$;

REVOKE ALL ON FUNCTION tradeops_submit_order(
    text, text, bigint, text, text, text, text[], text, integer, text, text, text, text, text,
    timestamptz, numeric, numeric, text, text, text, text, text, text) FROM PUBLIC;
"""

DROP_SUBMIT_ORDER = """
DROP FUNCTION tradeops_submit_order(
    text, text, bigint, text, text, text, text[], text, integer, text, text, text, text, text,
    timestamptz, numeric, numeric, text, text, text, text, text, text);
DROP TYPE tradeops_order_submitted;
"""


def upgrade() -> None:
    op.execute(SUBMIT_ORDER)


def downgrade() -> None:
    op.execute(DROP_SUBMIT_ORDER)
