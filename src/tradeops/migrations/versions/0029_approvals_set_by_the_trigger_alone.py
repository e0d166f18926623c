"""A new order's approvals are set by the trigger on orders alone

Revision ID: 0029
Revises: 0028
Create Date: 2026-11-28

Intake's statement worked out a new order's approvals_required (the desk's policy, the
instrument's latest price, the band its notional falls in) and wrote it into the row; the
BEFORE INSERT trigger orders_approvals_required (migrations 0016 and 0018) then worked it out
again and wrote over it. The statement now leaves it to the trigger and answers the new
row's value: the same value, worked out once. On PostgreSQL alone (bench/intake_cost.py
--against 0028, alternated three times) a new order cost 6-13% less of PostgreSQL's CPU on
one connection and 13-18% less on six (docs/benchmarks.md).

tradeops_submit_order (migrations 0025 and 0027) and tradeops_record_order (0028) hold the
statement: each gets the one orders.repository writes now, in place of the one after its
RETURN QUERY. tests/integration/test_one_statement_intake.py and
test_wakeups_after_commit.py hold each installed function equal to the code.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0029"
down_revision: str | None = "0028"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SUBMIT_ORDER = (
    "tradeops_submit_order(text, text, bigint, text, text, text, text[], text, integer, text,"
    " text, text, text, text, timestamptz, numeric, numeric, text, text, text, text, text, text)"
)
RECORD_ORDER = (
    "tradeops_record_order(text, text, text, text, text, timestamptz, numeric, numeric, text,"
    " bigint, bigint, boolean, bigint[], text, text, text, text, text)"
)

# orders.repository.submit_order_function() and record_order_function(), after and before.
SUBMITTED = """
WITH refs AS ( SELECT c.id AS client_pk, c.desk_id, c.status AS client_status, d.code AS
desk,  i.id AS instrument_pk, i.currency, i.lot_size, i.tick_size,  i.active AS
instrument_active FROM (SELECT 1) AS one LEFT JOIN clients c ON c.external_id = in_client_id
LEFT JOIN desks d ON d.id = c.desk_id LEFT JOIN instruments i ON i.symbol = in_symbol),
changed AS (INSERT INTO orders (desk_id, client_id, instrument_id, side, order_type,
time_in_force, expire_at, quantity, price, currency, client_order_id, created_by,
created_by_key_id) SELECT desk_id, client_pk, instrument_pk, CAST(in_side AS text),
 CAST(in_order_type AS text), CAST(in_time_in_force AS text),  CAST(in_expire_at AS
timestamptz), CAST(in_quantity AS numeric),  CAST(in_price AS numeric), currency,
CAST(in_client_order_id AS text),  CAST(who.user_id AS bigint), CAST(who.key_id AS bigint)
FROM refs WHERE client_status = 'ACTIVE' AND instrument_active  AND (CAST(who.all_desks AS
boolean) OR desk_id = ANY(CAST(who.desk_ids AS bigint[])))  AND mod(in_quantity, lot_size) =
0  AND (in_price IS NULL OR mod(in_price, tick_size) = 0) ON CONFLICT (created_by,
client_order_id) DO NOTHING RETURNING *), changed_event AS (INSERT INTO order_events
(order_id, desk_id, seq, type, payload) SELECT c.id, c.desk_id, c.version, in_event_type,
CAST(in_payload AS jsonb) FROM changed c), changed_audit AS (INSERT INTO audit_events
(stream, action, entity, entity_id, before, after) SELECT 'order' || ':' || c.id::text,
in_action, 'order', c.id::text, NULL, to_jsonb(c) FROM changed c), risk_job AS (SELECT
(procrastinate_defer_jobs_v1(ARRAY[ROW( CAST(in_risk_queue AS varchar), CAST(in_risk_task AS
varchar), 0, 'order:' || n.id, CAST(NULL AS text), jsonb_build_object('order_id', n.id),
CAST(NULL AS timestamptz))::procrastinate_job_to_defer_v1]))[1] AS risk_job_id FROM changed
n) SELECT who, ROW(refs.*, n.approvals_required, n.id, n.status, n.risk_status,
n.risk_reasons, n.filled_quantity, n.expire_at, n.version, n.created_at, n.updated_at,
job.risk_job_id)::tradeops_order_submitted FROM refs LEFT JOIN changed n ON true LEFT JOIN
risk_job job ON true"""
SUBMITTED_BEFORE = """
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
risk_job job ON true"""
RECORDED = """
WITH refs AS ( SELECT c.id AS client_pk, c.desk_id, c.status AS client_status, d.code AS
desk,  i.id AS instrument_pk, i.currency, i.lot_size, i.tick_size,  i.active AS
instrument_active FROM (SELECT 1) AS one LEFT JOIN clients c ON c.external_id = in_client_id
LEFT JOIN desks d ON d.id = c.desk_id LEFT JOIN instruments i ON i.symbol = in_symbol),
changed AS (INSERT INTO orders (desk_id, client_id, instrument_id, side, order_type,
time_in_force, expire_at, quantity, price, currency, client_order_id, created_by,
created_by_key_id) SELECT desk_id, client_pk, instrument_pk, CAST(in_side AS text),
 CAST(in_order_type AS text), CAST(in_time_in_force AS text),  CAST(in_expire_at AS
timestamptz), CAST(in_quantity AS numeric),  CAST(in_price AS numeric), currency,
CAST(in_client_order_id AS text),  CAST(in_created_by AS bigint), CAST(in_created_by_key_id
AS bigint) FROM refs WHERE client_status = 'ACTIVE' AND instrument_active  AND
(CAST(in_all_desks AS boolean) OR desk_id = ANY(CAST(in_desk_ids AS bigint[])))  AND
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
(ROW(refs.*, n.approvals_required, n.id, n.status, n.risk_status, n.risk_reasons,
n.filled_quantity, n.expire_at, n.version, n.created_at, n.updated_at,
job.risk_job_id)::tradeops_order_submitted).* FROM refs LEFT JOIN changed n ON true LEFT
JOIN risk_job job ON true"""
RECORDED_BEFORE = """
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
currency, CAST(in_client_order_id AS text),  CAST(in_created_by AS bigint),
CAST(in_created_by_key_id AS bigint), approvals_required FROM refs WHERE client_status =
'ACTIVE' AND instrument_active  AND (CAST(in_all_desks AS boolean) OR desk_id =
ANY(CAST(in_desk_ids AS bigint[])))  AND mod(in_quantity, lot_size) = 0  AND (in_price IS
NULL OR mod(in_price, tick_size) = 0) ON CONFLICT (created_by, client_order_id) DO NOTHING
RETURNING *), changed_event AS (INSERT INTO order_events (order_id, desk_id, seq, type,
payload) SELECT c.id, c.desk_id, c.version, in_event_type, CAST(in_payload AS jsonb) FROM
changed c), changed_audit AS (INSERT INTO audit_events (stream, action, entity, entity_id,
before, after) SELECT 'order' || ':' || c.id::text, in_action, 'order', c.id::text, NULL,
to_jsonb(c) FROM changed c), risk_job AS (SELECT (procrastinate_defer_jobs_v1(ARRAY[ROW(
CAST(in_risk_queue AS varchar), CAST(in_risk_task AS varchar), 0, 'order:' || n.id,
CAST(NULL AS text), jsonb_build_object('order_id', n.id), CAST(NULL AS
timestamptz))::procrastinate_job_to_defer_v1]))[1] AS risk_job_id FROM changed n) SELECT
(ROW(refs.*, n.id, n.status, n.risk_status, n.risk_reasons, n.filled_quantity, n.expire_at,
n.version, n.created_at, n.updated_at, job.risk_job_id)::tradeops_order_submitted).* FROM
refs LEFT JOIN changed n ON true LEFT JOIN risk_job job ON true"""


def _run_instead(signature: str, statement: str) -> None:
    """Put `statement` in place of the installed function's statement after RETURN QUERY
    (up to its semicolon), keeping the rest of the function as it is."""
    op.execute(f"""
DO $do$
DECLARE
    definition text := pg_get_functiondef('{signature}'::regprocedure);
    head integer := position(E'RETURN QUERY\\n' IN definition);
    size integer := position(E';\\n' IN substr(definition, head + 13)) - 1;
BEGIN
    IF head = 0 OR size < 0 THEN
        RAISE EXCEPTION '{signature.split("(")[0]} is not as migration 0029 expects';
    END IF;
    EXECUTE overlay(definition PLACING $statement${statement}$statement$ FROM head + 13 FOR size);
END $do$;
""")


def upgrade() -> None:
    _run_instead(SUBMIT_ORDER, SUBMITTED.strip())
    _run_instead(RECORD_ORDER, RECORDED.strip())


def downgrade() -> None:
    _run_instead(SUBMIT_ORDER, SUBMITTED_BEFORE.strip())
    _run_instead(RECORD_ORDER, RECORDED_BEFORE.strip())
