"""A fill in one statement

Revision ID: 0039
Revises: 0038
Create Date: 2026-11-29

Issue 15: "a write needs at most two" round trips. A fill (POST /orders/{id}/executions,
which venues and the OMS send all day) took eight: BEGIN, authenticate, the order locked,
the fill's context (a resend?), the position locked, the execution with the order's fill
state, the position booked, COMMIT. `tradeops_record_fill` takes one. In order:

- it authenticates with the function every request's first statement calls (which switches
  to the application role and publishes the caller's context, transaction-local), and
  answers only the caller for one who may not record fills (the rule of auth.permissions,
  passed in);
- it locks the order on the caller's desks, reads what its standing fills cost and whether
  the external id is known, and goes on only if no rule refuses the fill: the order APPROVED
  or PARTIALLY_FILLED, the quantity a multiple of the lot size and at most what is left, the
  price not through a LIMIT order's limit, the external id new. Anything else it leaves
  untouched and answers no fill: the application's transaction explains it as before (a
  resend answered as recorded, a conflict, a refusal, not found);
- it locks the position, records the execution with the order's fill state (its history
  and audit events), and books the position, with the same statements as the transaction
  (executions.repository.record_fill_function writes them; test_one_statement_fills.py holds
  this function equal to them). The position's arithmetic is positions.accounting's:
  `tradeops_apply_fill` (average cost, realized P&L, a fill past flat opening the other side)
  and `tradeops_divide_half_even` (its one rounding, and the averages', exact);
- an external id taken meanwhile by a concurrent fill raises SQLSTATE TO001: the position's
  lock is undone with the statement and the transaction answers the conflict.

The statement is its own transaction: the execution, the order, the position and their
events commit together or not at all.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0039"
down_revision: str | None = "0038"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RECORD_FILL = (
    "tradeops_record_fill(text, text, bigint, text, text, text, text[], text, integer, bigint,"
    " numeric, numeric, text, timestamptz, text, text)"
)
DIVIDE = "tradeops_divide_half_even(numeric, numeric, integer)"
APPLY_FILL = "tradeops_apply_fill(numeric, numeric, numeric, numeric, numeric)"

ARITHMETIC = f"""
-- decimals.divide_half_even: numerator / denominator rounded half-even to `places`, exact
-- (div truncates toward zero; the remainder decides, a tie going to the even quotient).
CREATE FUNCTION {DIVIDE}
RETURNS numeric LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT round((q + CASE WHEN 2 * abs(r) > abs($2) OR (2 * abs(r) = abs($2) AND mod(q, 2) <> 0)
                           THEN sign(scaled) * sign($2) ELSE 0 END) * power(10::numeric, -$3), $3)
    FROM (SELECT scaled, div(scaled, $2) AS q, scaled - div(scaled, $2) * $2 AS r
          FROM (SELECT $1 * power(10::numeric, $3) AS scaled) AS s) AS d
$$;

-- positions.accounting.apply_fill: the holding (quantity, cost basis, realized P&L) after a
-- fill of $4 (positive: bought) at $5.
CREATE FUNCTION {APPLY_FILL}
RETURNS TABLE (quantity numeric, cost_basis numeric, realized_pnl numeric)
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    held numeric := $1;
    cost numeric := $2;
    realized numeric := $3;
    open_quantity numeric := abs($1);
    closed numeric;
    cost_closed numeric;
    rest numeric;
BEGIN
    IF $4 = 0 OR $5 <= 0 THEN
        RAISE EXCEPTION 'a fill has a non-zero quantity and a positive price';
    END IF;
    IF held = 0 OR sign($4) = sign(held) THEN  -- opens or adds: at its cost
        RETURN QUERY SELECT held + $4, cost + $4 * $5, realized;
        RETURN;
    END IF;
    closed := least(abs($4), open_quantity);
    cost_closed := CASE WHEN closed = open_quantity THEN cost
                        ELSE tradeops_divide_half_even(cost * closed, open_quantity, 12) END;
    -- A long sells `closed` for closed * price; a short buys it back for that much.
    realized := realized + sign(held) * closed * $5 - cost_closed;
    rest := abs($4) - closed;
    IF rest > 0 THEN  -- beyond the holding: a new position on the fill's side
        RETURN QUERY SELECT sign($4) * rest, sign($4) * rest * $5, realized;
    ELSE
        RETURN QUERY SELECT held + $4, cost - cost_closed, realized;
    END IF;
END $$;
"""  # noqa: S608 - SQL from this code only

FILL_RECORDED = """
CREATE TYPE tradeops_fill_recorded AS (
    id bigint, order_id bigint, external_id text, quantity numeric, price numeric,
    venue text, executed_at timestamptz, recorded_by text, recorded_at timestamptz,
    order_status text, order_quantity numeric, order_filled_quantity numeric,
    order_avg_fill_price numeric, order_version integer
);
"""

FUNCTION = f"""
-- $1-$6 the credential as tradeops_authenticate takes it, the roles and key scope that may
-- record fills, the time limit, then the order and the fill; in_payload the order event's
-- payload but for its filled quantity. One row when the credentials name a principal:
-- `caller`, and the fill recorded (NULL when nothing was written).
CREATE FUNCTION tradeops_record_fill(
    in_prefix text, in_hash text, in_user_id bigint, in_email text, in_app_role text,
    in_request_id text, in_roles text[], in_scope text, in_lock_timeout_ms integer,
    in_order_id bigint, in_quantity numeric, in_price numeric, in_venue text,
    in_executed_at timestamptz, in_external_id text, in_payload text
) RETURNS TABLE (caller tradeops_principal, recorded tradeops_fill_recorded)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    who tradeops_principal;
    locked record;
    known record;
    held record;
    fill_row record;
    fill_with numeric;
    fill_status text;
    fill_action text;
    fill_avg_price numeric;
    fill_payload text;
    held_quantity numeric;
    held_cost_basis numeric;
    held_realized_pnl numeric;
    held_avg_cost numeric;
    held_key text;
    held_version integer;
BEGIN
    SELECT * INTO who FROM tradeops_authenticate(
        in_prefix, in_hash, in_user_id, in_email, in_app_role, in_request_id);
    IF NOT FOUND THEN
        RETURN;  -- no principal: nothing is written
    END IF;
    IF NOT (who.role = ANY(in_roles) AND (who.scopes IS NULL OR in_scope = ANY(who.scopes)))
    THEN
        RETURN QUERY SELECT who, NULL::tradeops_fill_recorded;  -- may not: nothing written
        RETURN;
    END IF;
    -- Sent alone, the statement has no BEGIN to carry its time limit: waiting for a lock
    -- (the order's, the position's) ends here, in the server, past in_lock_timeout_ms,
    -- with nothing written.
    PERFORM set_config('lock_timeout', in_lock_timeout_ms::text, true);
    -- The order, locked as executions.service.record_execution locks it: fills of one
    -- order queue here, and what follows is read under this lock.
    SELECT o.id, o.desk_id, o.client_id, o.instrument_id, o.side, o.order_type, o.price AS
    limit_price, o.quantity, o.filled_quantity, o.avg_fill_price, o.status, o.version,
    c.external_id AS client_external_id, i.symbol, i.lot_size INTO locked FROM orders o JOIN
    clients c ON c.id = o.client_id JOIN instruments i ON i.id = o.instrument_id WHERE o.id
    = in_order_id AND (who.all_desks OR o.desk_id = ANY(who.desk_ids)) FOR UPDATE OF o;
    IF NOT FOUND THEN
        RETURN QUERY SELECT who, NULL::tradeops_fill_recorded;
        RETURN;
    END IF;
    -- A statement of its own, after the lock: it sees every fill committed before.
    SELECT (SELECT COALESCE(sum(f.quantity * f.price), 0) FROM executions f  WHERE
    f.order_id = in_order_id AND f.kind = 'FILL'  AND NOT EXISTS (SELECT FROM executions b
    WHERE b.reverses_execution_id = f.id))  AS filled_notional, e.id, e.order_id,
    e.external_id, e.quantity, e.price, e.venue, e.executed_at, u.email AS recorded_by,
    e.recorded_at INTO known FROM (SELECT 1) AS one LEFT JOIN executions e ON e.venue =
    in_venue AND e.external_id = in_external_id LEFT JOIN users u ON u.id = e.recorded_by;
    IF known.id IS NOT NULL  -- a resend, or a conflict: the transaction answers it
       OR locked.status NOT IN ('APPROVED', 'PARTIALLY_FILLED')
       OR mod(in_quantity, locked.lot_size) <> 0
       OR in_quantity > locked.quantity - locked.filled_quantity
       OR (locked.limit_price IS NOT NULL AND CASE WHEN locked.side = 'BUY'
               THEN in_price > locked.limit_price ELSE in_price < locked.limit_price END)
    THEN
        RETURN QUERY SELECT who, NULL::tradeops_fill_recorded;
        RETURN;
    END IF;
    fill_with := locked.filled_quantity + in_quantity;
    fill_status := CASE WHEN fill_with = locked.quantity THEN 'FILLED' ELSE 'PARTIALLY_FILLED' END;
    fill_action := 'order.' || lower(fill_status);
    fill_avg_price := tradeops_divide_half_even(
        known.filled_notional + in_quantity * in_price, fill_with, 6);
    fill_payload := (CAST(in_payload AS jsonb)
        || jsonb_build_object('filled_quantity', trim_scale(fill_with)::text))::text;
    INSERT INTO positions (desk_id, client_id, instrument_id) VALUES (locked.desk_id,
    locked.client_id, locked.instrument_id) ON CONFLICT (client_id, instrument_id) DO UPDATE
    SET version = positions.version RETURNING quantity, cost_basis, realized_pnl, version
    INTO held;
    WITH new_execution AS ( INSERT INTO executions (order_id, desk_id, quantity, price,
    venue, executed_at,  external_id, recorded_by, recorded_by_key_id) VALUES (in_order_id,
    locked.desk_id, in_quantity, in_price, in_venue, in_executed_at, in_external_id,
    who.user_id, who.key_id) ON CONFLICT (venue, external_id) DO NOTHING RETURNING *),
    audit_execution AS (INSERT INTO audit_events (stream, action, entity, entity_id, before,
    after) SELECT 'execution' || ':' || e.id::text, 'execution.recorded', 'execution',
    e.id::text, NULL, to_jsonb(e) FROM new_execution e), before AS (SELECT * FROM orders
    WHERE id = in_order_id), changed AS (UPDATE orders SET filled_quantity = filled_quantity
    + in_quantity, avg_fill_price = fill_avg_price, status = fill_status, version = version
    + 1, updated_at = now() WHERE id = in_order_id AND version = locked.version AND EXISTS
    (SELECT FROM new_execution) RETURNING *), changed_event AS (INSERT INTO order_events
    (order_id, desk_id, seq, type, payload) SELECT c.id, c.desk_id, c.version, fill_status,
    CAST(fill_payload AS jsonb) || jsonb_build_object('execution_id', e.id) FROM changed c
    CROSS JOIN new_execution e), changed_audit AS (INSERT INTO audit_events (stream, action,
    entity, entity_id, before, after) SELECT 'order' || ':' || c.id::text, fill_action,
    'order', c.id::text, to_jsonb(b), to_jsonb(c) FROM changed c CROSS JOIN before b) SELECT
    e.id, e.order_id, e.external_id, e.quantity, e.price, e.venue, e.executed_at, u.email AS
    recorded_by, e.recorded_at, c.status AS order_status, c.filled_quantity AS
    order_filled_quantity, c.avg_fill_price AS order_avg_fill_price, c.version AS
    order_version INTO fill_row FROM new_execution e JOIN changed c ON c.id = e.order_id
    JOIN users u ON u.id = e.recorded_by;
    IF NOT FOUND THEN  -- the external id was taken meanwhile: undo the position's lock
        RAISE EXCEPTION 'the fill''s external id was taken; the transaction answers it'
            USING ERRCODE = 'TO001';
    END IF;
    SELECT * INTO held_quantity, held_cost_basis, held_realized_pnl FROM tradeops_apply_fill(
        held.quantity, held.cost_basis, held.realized_pnl,
        CASE WHEN locked.side = 'BUY' THEN in_quantity ELSE -in_quantity END, in_price);
    held_avg_cost := CASE WHEN held_quantity <> 0
        THEN tradeops_divide_half_even(held_cost_basis, held_quantity, 10) END;
    held_key := locked.client_external_id || ':' || locked.symbol;
    WITH before AS ( SELECT * FROM positions WHERE client_id = locked.client_id AND
    instrument_id = locked.instrument_id), changed AS ( UPDATE positions SET quantity =
    held_quantity, avg_cost = held_avg_cost,  cost_basis = held_cost_basis, realized_pnl =
    held_realized_pnl, version = version + 1,  updated_at = now() WHERE client_id =
    locked.client_id AND instrument_id = locked.instrument_id AND version = held.version
    RETURNING *), audit AS (INSERT INTO audit_events (stream, action, entity, entity_id,
    before, after) SELECT 'position' || ':' || CAST(held_key AS text), 'position.changed',
    'position', CAST(held_key AS text), to_jsonb(b), to_jsonb(c) ||
    jsonb_build_object('execution_id', CAST(fill_row.id AS bigint)) FROM changed c CROSS
    JOIN before b) SELECT version INTO held_version FROM changed;
    IF NOT FOUND THEN  -- never: the position is locked
        RAISE EXCEPTION 'position % changed while locked', held_key;
    END IF;
    RETURN QUERY SELECT who, ROW(
        fill_row.id, fill_row.order_id, fill_row.external_id, fill_row.quantity,
        fill_row.price, fill_row.venue, fill_row.executed_at, fill_row.recorded_by,
        fill_row.recorded_at, fill_row.order_status, locked.quantity,
        fill_row.order_filled_quantity, fill_row.order_avg_fill_price,
        fill_row.order_version)::tradeops_fill_recorded;
END $$;

REVOKE ALL ON FUNCTION {RECORD_FILL} FROM PUBLIC;
"""  # noqa: S608 - SQL from this code only


def upgrade() -> None:
    op.execute(ARITHMETIC + FILL_RECORDED + FUNCTION)


def downgrade() -> None:
    op.execute(
        f"DROP FUNCTION {RECORD_FILL}; DROP TYPE tradeops_fill_recorded;"
        f" DROP FUNCTION {APPLY_FILL}; DROP FUNCTION {DIVIDE};"
    )
