"""Maker-checker decisions (review, approve, reject, cancel) in one statement

Revision ID: 0035
Revises: 0034
Create Date: 2026-11-29

Issue 15: "a write needs at most two" round trips. A review, a rejection or a cancellation
took five (BEGIN, authenticate, the order locked, the transition with its event and audit
entry answering the order, COMMIT), an approval six (the approval's row besides). `tradeops_decide_order` makes
each in one statement, as tradeops_submit_order (0025) makes intake:

- it authenticates with the function every request's first statement calls (which switches
  to the application role and publishes the caller's context, transaction-local);
- it refuses a caller whose role may not decide so, or whose key lacks a scope the endpoint
  needs, or any key for a person's act (the roles and scopes it is given come from
  auth.permissions: the rule is written once);
- it locks the order as workflow.transition_order does, but only one no rule refuses: in a
  status the decision starts from, on one of the caller's desks (row-level security applies
  too), at the version the caller named if any, not the maker's own where a checker must
  decide, only the maker's own or by a role that may decide on others' orders where that
  rule holds (a cancellation), and for an approval only with its risk check PASSED and one
  approval needed (an order needing several goes the transaction's way, which counts them);
- it records an approval (orders.repository.RECORD_APPROVAL), then makes the change
  TRANSITION makes (decide_order_function(): the order, its event, its audit entry), whose
  triggers check maker-checker again;
- it answers the order's JSON document as GET /orders/{id} writes it.

Whenever it writes nothing (no such order for this caller, a rule that refuses, a caller who
may not), it says so, and the endpoint runs in a transaction as before and explains why with
the documented problem: the rules' explanations stay written once, in Python. Sent alone, the
statement is its own transaction: the context dies with it, on a pooled or PgBouncer'd
connection alike.

The order's document, which tradeops_read_order wrote inline (0026), is now the SQL function
tradeops_order_document, which both call, as the application role after the switch (so it is
not revoked from PUBLIC: it runs with its caller's rights, under row-level security).
PostgreSQL inlines it where it is called, so the read's plan is the one it had.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0035"
down_revision: str | None = "0034"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The order as GET /orders/{id} shows it (0026): OrderOut's columns, in its order, which
# row_to_json writes as its keys; read from orders_as_shown (security_invoker) under the
# caller's desk condition.
DOCUMENT = """
        SELECT shown.version, row_to_json(shown)::text AS document FROM (
            SELECT o.id, o.status, o.risk_status,
                   CASE WHEN o.risk_reasons = '[]' THEN '[]'
                        ELSE tradeops_json_compact(o.risk_reasons) END::json AS risk_reasons,
                   o.client_id, o.desk, o.symbol, o.side, o.order_type, o.time_in_force,
                   tradeops_json_time(o.expire_at) AS expire_at,
                   trim_scale(o.quantity)::text AS quantity,
                   trim_scale(o.price)::text AS price, o.currency,
                   trim_scale(o.filled_quantity)::text AS filled_quantity,
                   trim_scale(o.avg_fill_price)::text AS avg_fill_price, o.client_order_id,
                   o.created_by, o.reviewed_by, o.approved_by, o.approvals_required,
                   (SELECT COALESCE('[' || string_agg(
                                '{{"approved_by":' || to_json(u.email)::text
                                || ',"approved_at":"' || tradeops_json_time(a.approved_at)
                                || '","note":' || COALESCE(to_json(a.note)::text, 'null') || '}}',
                                ',' ORDER BY a.approved_at, u.email) || ']', '[]')::json
                    FROM order_approvals a JOIN users u ON u.id = a.approved_by
                    WHERE a.order_id = o.id) AS approvals,
                   o.replaces, o.replaced_by, o.version,
                   tradeops_json_time(o.created_at) AS created_at,
                   tradeops_json_time(o.updated_at) AS updated_at
            FROM orders_as_shown o
            WHERE o.id = {order_id} AND ({every_desk} OR o.desk_id = ANY({desk_list}))
        ) AS shown"""

READ_ORDER = "tradeops_read_order(text, text, bigint, text, text, text, bigint)"
_READ_ORDER = """
CREATE OR REPLACE FUNCTION {signature}
RETURNS TABLE (caller tradeops_principal, version integer, document text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    who tradeops_principal;
BEGIN
    SELECT * INTO who FROM tradeops_authenticate($1, $2, $3, $4, $5, $6);
    IF NOT FOUND THEN
        RETURN;  -- no principal: nothing is read
    END IF;
    -- A statement of its own, after the switch: it runs as the application role, with the
    -- principal's context, so row-level security applies to every row it reads.
    RETURN QUERY SELECT who, read.version, read.document FROM (SELECT 1) AS one
    LEFT JOIN {read} AS read ON true;
END $$;
"""

DECIDE_ORDER = (
    "tradeops_decide_order(text, text, bigint, text, text, text, text[], text[], integer,"
    " bigint, integer, text[], boolean, text[], boolean, text, text, text, text, text)"
)
IN_ONE_STATEMENT = (
    """
CREATE FUNCTION tradeops_order_document(in_order_id bigint, every_desk boolean,
                                        desk_list bigint[])
RETURNS TABLE (version integer, document text)
LANGUAGE sql STABLE AS $$"""  # noqa: S608 - SQL from this code only
    + DOCUMENT.format(order_id="in_order_id", every_desk="every_desk", desk_list="desk_list")
    + """
$$;
"""
    + _READ_ORDER.format(
        signature=READ_ORDER, read="tradeops_order_document($7, who.all_desks, who.desk_ids)"
    )
    + """
-- in_prefix .. in_request_id as tradeops_submit_order's. in_roles and in_scopes: who may (a
-- role among them; a key with every one of the scopes; in_scopes NULL: no key, a person's
-- act). in_lock_timeout_ms: the longest wait for a lock. Then the order, the version its
-- decider read (NULL: any), the statuses the decision starts from, whether its maker is
-- ruled out (in_checker), the roles that may decide on an order not their own (NULL: any
-- who may decide at all), whether it is an approval (in_approval: its risk check PASSED,
-- one approval needed, recorded with in_note), and TRANSITION's values. One row when the
-- credentials name a principal: `caller`, and the order's new version and document (both
-- NULL when nothing was written).
CREATE FUNCTION tradeops_decide_order(
    in_prefix text, in_hash text, in_user_id bigint, in_email text, in_app_role text,
    in_request_id text, in_roles text[], in_scopes text[], in_lock_timeout_ms integer,
    in_order_id bigint, in_version integer, in_from_statuses text[], in_checker boolean,
    in_others_by text[], in_approval boolean, in_note text, in_to_status text, in_event_type text,
    in_payload text, in_action text
) RETURNS TABLE (caller tradeops_principal, new_version integer, document text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    who tradeops_principal;
    at_version integer;
    at_status text;
    at_desk bigint;
    n_given integer;
    was_added boolean;
    by_reviewer bigint;
    by_approver bigint;
    by_rejecter bigint;
BEGIN
    SELECT * INTO who FROM tradeops_authenticate(
        in_prefix, in_hash, in_user_id, in_email, in_app_role, in_request_id);
    IF NOT FOUND THEN
        RETURN;  -- no principal: nothing is written
    END IF;
    IF NOT (who.role = ANY(in_roles)
            AND (who.scopes IS NULL OR (in_scopes IS NOT NULL AND in_scopes <@ who.scopes)))
    THEN
        RETURN QUERY SELECT who, NULL::integer, NULL::text;  -- may not: nothing written
        RETURN;
    END IF;
    -- Sent alone, the statement has no BEGIN to carry its time limit: waiting for the
    -- order's lock ends here, in the server, past in_lock_timeout_ms, with nothing written.
    PERFORM set_config('lock_timeout', in_lock_timeout_ms::text, true);
    -- Locked as workflow.transition_order locks it, so concurrent deciders queue here;
    -- after a wait its conditions are checked again on the order as it is now. Only an
    -- order no rule refuses: any other the endpoint explains, in a transaction.
    SELECT o.version, o.status, o.desk_id INTO at_version, at_status, at_desk FROM orders o
    WHERE o.id = in_order_id AND o.status = ANY(in_from_statuses)
      AND (who.all_desks OR o.desk_id = ANY(who.desk_ids))
      AND (in_version IS NULL OR o.version = in_version)
      AND NOT (in_checker AND o.created_by = who.user_id)
      AND (in_others_by IS NULL OR o.created_by = who.user_id OR who.role = ANY(in_others_by))
      AND NOT (in_approval AND (o.risk_status <> 'PASSED' OR o.approvals_required <> 1))
    FOR UPDATE OF o;
    IF NOT FOUND THEN
        RETURN QUERY SELECT who, NULL::integer, NULL::text;
        RETURN;
    END IF;
    IF in_approval THEN
        -- A statement of its own, after the lock: it sees every approval committed before.
        {approval};
        IF NOT was_added THEN  -- theirs already: nothing written
            RETURN QUERY SELECT who, NULL::integer, NULL::text;
            RETURN;
        END IF;
    END IF;
    by_reviewer := CASE WHEN in_to_status = 'REVIEWED' THEN who.user_id END;
    by_approver := CASE WHEN in_to_status = 'APPROVED' THEN who.user_id END;
    by_rejecter := CASE WHEN in_to_status = 'REJECTED' THEN who.user_id END;
    -- A statement of its own, after the lock: its snapshot sees the order as locked.
    {change};
    IF NOT FOUND THEN  -- never (the row is locked): undo the approval, if any
        RAISE EXCEPTION 'order % changed under its lock', in_order_id;
    END IF;
    RETURN QUERY SELECT who, d.version, d.document
    FROM tradeops_order_document(in_order_id, who.all_desks, who.desk_ids) AS d;
    IF NOT FOUND THEN  -- never: the decider may see the order they just locked
        RAISE EXCEPTION 'order % was decided but cannot be read back', in_order_id;
    END IF;
END $$;
"""
    + f"REVOKE ALL ON FUNCTION {DECIDE_ORDER} FROM PUBLIC;\n"
)

# What orders.repository.decide_order_function() writes of RECORD_APPROVAL and TRANSITION at
# this revision; tests/integration/test_one_statement_decisions.py holds the installed
# function equal to them.
RECORD_APPROVAL = (
    "WITH given AS (SELECT approved_by FROM order_approvals WHERE order_id = in_order_id),"
    " added AS (INSERT INTO order_approvals (order_id, desk_id, approved_by, note)"
    "  SELECT in_order_id, at_desk, who.user_id, CAST(in_note AS text)"
    "  WHERE NOT EXISTS (SELECT 1 FROM given WHERE approved_by = who.user_id)"
    "  ON CONFLICT DO NOTHING RETURNING approved_by)"
    " SELECT CAST((SELECT count(*) FROM given) + (SELECT count(*) FROM added) AS integer)"
    "  AS given, EXISTS (SELECT 1 FROM added) AS added INTO n_given, was_added"
)
DECISION_CHANGE = (
    "WITH before AS (SELECT * FROM orders WHERE id = in_order_id),"
    " changed AS (UPDATE orders SET status = in_to_status,"
    " reviewed_by = COALESCE(by_reviewer, reviewed_by),"
    " approved_by = COALESCE(by_approver, approved_by),"
    " rejected_by = COALESCE(by_rejecter, rejected_by),"
    " version = version + 1, updated_at = now()"
    " WHERE id = in_order_id AND version = at_version AND status = at_status"
    " RETURNING *),"
    " changed_event AS (INSERT INTO order_events (order_id, desk_id, seq, type, payload)"
    " SELECT c.id, c.desk_id, c.version, in_event_type, CAST(in_payload AS jsonb)"
    " FROM changed c),"
    " changed_audit AS (INSERT INTO audit_events (stream, action, entity, entity_id, before,"
    " after) SELECT 'order' || ':' || c.id::text, in_action, 'order', c.id::text, to_jsonb(b),"
    " to_jsonb(c) FROM changed c CROSS JOIN before b)"
    " SELECT version INTO at_version FROM changed"
)


def upgrade() -> None:
    op.execute(
        IN_ONE_STATEMENT.replace("{approval}", RECORD_APPROVAL).replace("{change}", DECISION_CHANGE)
    )


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {DECIDE_ORDER};")
    inline = (
        "("
        + DOCUMENT.format(order_id="$7", every_desk="who.all_desks", desk_list="who.desk_ids")
        + "\n    )"
    )
    op.execute(_READ_ORDER.format(signature=READ_ORDER, read=inline))
    op.execute("DROP FUNCTION tradeops_order_document(bigint, boolean, bigint[]);")
