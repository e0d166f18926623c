"""PATCH /orders/{id} (an amendment) in one statement

Revision ID: 0040
Revises: 0039
Create Date: 2026-11-29

Issue 15: "a write needs at most two" round trips. An amendment took five: BEGIN,
authenticate, the order locked, the replacement and the order REPLACED with their events,
COMMIT. `tradeops_amend_order` takes one. In order:

- it authenticates with the function every request's first statement calls (which switches
  to the application role and publishes the caller's context, transaction-local), and
  answers only the caller for one who may not submit orders (an amendment is a new order);
- it locks the order on the caller's desks as workflow.replace_order locks it, and goes on
  only if no rule refuses the amendment: the version named (if any), an open status, the
  caller its maker, and the new terms as intake checks them (the quantity in lots, the price
  in ticks, no price for a MARKET order, an expiry only for GTD and needed by an order
  becoming GTD). Anything else it leaves untouched and answers no order: the application's
  transaction explains it as before;
- it replaces the order with the transaction's own statement (REPLACE_ORDER: the new order
  with its CREATED events and risk job, the old one REPLACED with its events), and answers
  the new order's document as GET /orders/{id} writes it. A client_order_id the maker
  already used inserts nothing, and the transaction answers the conflict.

orders.repository.amend_order_function() writes both statements;
tests/integration/test_one_statement_amendments.py holds this function equal to them.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0040"
down_revision: str | None = "0039"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AMEND_ORDER = (
    "tradeops_amend_order(text, text, bigint, text, text, text, text[], text, integer, bigint,"
    " integer, text[], numeric, numeric, text, text, timestamptz, text, text, text, text, text)"
)
FUNCTION = f"""
-- $1-$6 the credential as tradeops_authenticate takes it, the roles and key scope that may
-- submit orders, the time limit, the order and the version named (NULL: any), the open
-- statuses, the amended terms (NULL: unchanged), and the events' and the risk job's values.
-- One row when the credentials name a principal: `caller`, and the new order (NULL when
-- nothing was written).
CREATE FUNCTION tradeops_amend_order(
    in_prefix text, in_hash text, in_user_id bigint, in_email text, in_app_role text,
    in_request_id text, in_roles text[], in_scope text, in_lock_timeout_ms integer,
    in_order_id bigint, in_version integer, in_open_statuses text[], in_quantity numeric,
    in_price numeric, in_client_order_id text, in_time_in_force text,
    in_expire_at timestamptz, in_payload text, in_event_type text, in_action text,
    in_risk_queue text, in_risk_task text
) RETURNS TABLE (caller tradeops_principal, new_id bigint, new_version integer, document text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    who tradeops_principal;
    locked record;
    made record;
    amended_quantity numeric;
    amended_price numeric;
    amended_time_in_force text;
BEGIN
    SELECT * INTO who FROM tradeops_authenticate(
        in_prefix, in_hash, in_user_id, in_email, in_app_role, in_request_id);
    IF NOT FOUND THEN
        RETURN;  -- no principal: nothing is written
    END IF;
    IF NOT (who.role = ANY(in_roles) AND (who.scopes IS NULL OR in_scope = ANY(who.scopes)))
    THEN
        RETURN QUERY SELECT who, NULL::bigint, NULL::integer, NULL::text;  -- may not
        RETURN;
    END IF;
    -- Sent alone, the statement has no BEGIN to carry its time limit: waiting for the
    -- order's lock ends here, in the server, past in_lock_timeout_ms, with nothing written.
    PERFORM set_config('lock_timeout', in_lock_timeout_ms::text, true);
    SELECT o.id, o.desk_id, o.status, o.version, o.created_by, o.risk_status,
    o.risk_reasons, o.approvals_required, ARRAY(SELECT a.approved_by FROM order_approvals a
    WHERE a.order_id = o.id) AS approvers, c.external_id AS client_id, d.code AS desk,
    i.symbol, o.side, o.order_type, o.time_in_force, o.quantity, o.price, o.currency,
    o.filled_quantity, o.client_order_id, i.lot_size, i.tick_size INTO locked FROM orders o
    JOIN clients c ON c.id = o.client_id JOIN desks d ON d.id = o.desk_id JOIN instruments i
    ON i.id = o.instrument_id WHERE o.id = in_order_id AND (who.all_desks OR o.desk_id =
    ANY(who.desk_ids)) FOR UPDATE OF o;
    IF NOT FOUND THEN
        RETURN QUERY SELECT who, NULL::bigint, NULL::integer, NULL::text;
        RETURN;
    END IF;
    amended_quantity := COALESCE(in_quantity, locked.quantity - locked.filled_quantity);
    amended_price := COALESCE(in_price, locked.price);
    amended_time_in_force := COALESCE(in_time_in_force, locked.time_in_force);
    IF (in_version IS NOT NULL AND in_version <> locked.version)
       OR NOT locked.status = ANY(in_open_statuses)
       OR locked.created_by <> who.user_id
       OR (in_price IS NOT NULL AND locked.order_type = 'MARKET')
       OR mod(amended_quantity, locked.lot_size) <> 0
       OR (amended_price IS NOT NULL AND mod(amended_price, locked.tick_size) <> 0)
       OR (in_expire_at IS NOT NULL AND amended_time_in_force <> 'GTD')
       OR (in_expire_at IS NULL AND amended_time_in_force = 'GTD'
           AND locked.time_in_force <> 'GTD')
    THEN
        RETURN QUERY SELECT who, NULL::bigint, NULL::integer, NULL::text;
        RETURN;
    END IF;
    -- A statement of its own, after the lock: its snapshot sees the order as locked.
    WITH created AS (INSERT INTO orders (desk_id, client_id, instrument_id, side,
    order_type, time_in_force, expire_at, quantity, price, currency, client_order_id,
    created_by, created_by_key_id, replaces) SELECT o.desk_id, o.client_id, o.instrument_id,
    o.side, o.order_type,  CAST(amended_time_in_force AS text),  CASE WHEN
    CAST(amended_time_in_force AS text) = 'GTD' THEN COALESCE(   CAST(in_expire_at AS
    timestamptz),   CASE WHEN o.time_in_force = 'GTD' THEN o.expire_at END)  END,
    CAST(amended_quantity AS numeric), CAST(amended_price AS numeric), o.currency,
    CAST(in_client_order_id AS text), o.created_by, CAST(who.key_id AS bigint), o.id FROM
    orders o WHERE o.id = in_order_id AND o.version = locked.version AND o.status =
    locked.status ON CONFLICT (created_by, client_order_id) DO NOTHING RETURNING *),
    created_event AS (INSERT INTO order_events (order_id, desk_id, seq, type, payload)
    SELECT c.id, c.desk_id, c.version, 'CREATED', CAST(in_payload AS jsonb) ||
    jsonb_build_object('replaces', c.replaces) FROM created c), created_audit AS (INSERT
    INTO audit_events (stream, action, entity, entity_id, before, after) SELECT 'order' ||
    ':' || c.id::text, 'order.created', 'order', c.id::text, NULL, to_jsonb(c) FROM created
    c), before AS (SELECT * FROM orders WHERE id = in_order_id), changed AS (UPDATE orders
    SET status = 'REPLACED', replaced_by = (SELECT id FROM created), version = version + 1,
    updated_at = now() WHERE id = in_order_id AND version = locked.version AND status =
    locked.status AND EXISTS (SELECT FROM created) RETURNING *), changed_event AS (INSERT
    INTO order_events (order_id, desk_id, seq, type, payload) SELECT c.id, c.desk_id,
    c.version, in_event_type, CAST(in_payload AS jsonb) || jsonb_build_object('replaced_by',
    c.replaced_by) FROM changed c), changed_audit AS (INSERT INTO audit_events (stream,
    action, entity, entity_id, before, after) SELECT 'order' || ':' || c.id::text,
    in_action, 'order', c.id::text, to_jsonb(b), to_jsonb(c) FROM changed c CROSS JOIN
    before b), risk_job AS (SELECT (procrastinate_defer_jobs_v1(ARRAY[ROW(
    CAST(in_risk_queue AS varchar), CAST(in_risk_task AS varchar), 0, 'order:' || n.id,
    CAST(NULL AS text), jsonb_build_object('order_id', n.id), CAST(NULL AS
    timestamptz))::procrastinate_job_to_defer_v1]))[1] AS risk_job_id FROM created n) SELECT
    n.id, n.status, n.risk_status, n.risk_reasons, n.filled_quantity, n.expire_at,
    n.replaces, n.approvals_required, n.version, n.created_at, n.updated_at, job.risk_job_id
    INTO made FROM created n JOIN changed c ON c.replaced_by = n.id CROSS JOIN risk_job job;
    IF NOT FOUND THEN  -- the maker's client_order_id is taken: nothing was written
        RETURN QUERY SELECT who, NULL::bigint, NULL::integer, NULL::text;
        RETURN;
    END IF;
    RETURN QUERY SELECT who, made.id, d.version, d.document
    FROM tradeops_order_document(made.id, who.all_desks, who.desk_ids) AS d;
    IF NOT FOUND THEN  -- never: the maker sees the order they just made
        RAISE EXCEPTION 'order % was made but cannot be read back', made.id;
    END IF;
END $$;

REVOKE ALL ON FUNCTION {AMEND_ORDER} FROM PUBLIC;
"""  # noqa: S608 - SQL from this code only


def upgrade() -> None:
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {AMEND_ORDER}")
