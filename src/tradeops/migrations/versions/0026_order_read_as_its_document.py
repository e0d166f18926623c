"""GET /orders/{id} answers the document PostgreSQL writes

Revision ID: 0026
Revises: 0025
Create Date: 2026-11-28

Issue 15, "pydantic on the way out (PostgreSQL can render the JSON of a read, as the
portfolio already does)". `tradeops_read_order` answered the order as a composite value,
which the application decoded (28 fields, two of them JSON parsed again), validated as
OrderOut and serialized. It now answers the order's JSON document itself, with its version
(the ETag): the bytes OrderOut.model_dump_json() writes for the same row, the same keys in
the same order, compact (tests/integration/test_order_document.py holds them equal, order
by order, approvals, risk reasons, notes and all). Authentication, the role switch, the
context and row-level security are as before: the document is read from orders_as_shown
after the switch, under the caller's desk condition.

How the document writes what pydantic writes:
- amounts as plain decimal strings (decimals.plain): trim_scale, "50" not "50.000000";
- times in UTC with a Z, their microseconds left out when there are none
  (`tradeops_json_time`);
- risk reasons (jsonb) compact, their keys in jsonb's order, the order the application read
  them in (`tradeops_json_compact`); risk.rules writes their amounts as strings, and a
  number in them would come out as jsonb keeps it (1e2 as 100, where Python writes 100.0);
- approvals as ApprovalOut writes them: approved_by, approved_at, note.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READ_ORDER_DOCUMENT = """
-- A time as pydantic writes a datetime in JSON: UTC, Z, microseconds only when not zero.
-- One expression (SQL, STABLE): PostgreSQL inlines it where it is called.
CREATE FUNCTION tradeops_json_time(at timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT replace(to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '.000000', '')
        || 'Z'
$$;

-- JSON text without spaces (jsonb's own text has one after each comma and colon), the keys
-- of each object in jsonb's order.
CREATE FUNCTION tradeops_json_compact(doc jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN CASE jsonb_typeof(doc)
        WHEN 'object' THEN '{' || COALESCE((
            SELECT string_agg(to_json(e.key)::text || ':' || tradeops_json_compact(e.value), ','
                              ORDER BY e.n)
            FROM jsonb_each(doc) WITH ORDINALITY AS e(key, value, n)), '') || '}'
        WHEN 'array' THEN '[' || COALESCE((
            SELECT string_agg(tradeops_json_compact(e.value), ',' ORDER BY e.n)
            FROM jsonb_array_elements(doc) WITH ORDINALITY AS e(value, n)), '') || ']'
        ELSE doc::text
    END;
END $$;

DROP FUNCTION tradeops_read_order(text, text, bigint, text, text, text, bigint);

-- $1/$2 an API key's prefix and hash, or NULL and $3/$4 a person's id and e-mail; $5 the
-- application role, $6 the request id, $7 the order. One row when the credentials name a
-- principal: `caller`, and the order's `version` and `document` (NULL when no such order
-- is visible to it).
CREATE FUNCTION tradeops_read_order(text, text, bigint, text, text, text, bigint)
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
    -- principal's context, so row-level security applies to every row it reads. The
    -- columns are OrderOut's, in its order: row_to_json writes them as its keys.
    RETURN QUERY SELECT who, read.version, read.document FROM (SELECT 1) AS one
    LEFT JOIN (
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
                                '{"approved_by":' || to_json(u.email)::text
                                || ',"approved_at":"' || tradeops_json_time(a.approved_at)
                                || '","note":' || COALESCE(to_json(a.note)::text, 'null') || '}',
                                ',' ORDER BY a.approved_at, u.email) || ']', '[]')::json
                    FROM order_approvals a JOIN users u ON u.id = a.approved_by
                    WHERE a.order_id = o.id) AS approvals,
                   o.replaces, o.replaced_by, o.version,
                   tradeops_json_time(o.created_at) AS created_at,
                   tradeops_json_time(o.updated_at) AS updated_at
            FROM orders_as_shown o
            WHERE o.id = $7 AND (who.all_desks OR o.desk_id = ANY(who.desk_ids))
        ) AS shown
    ) AS read ON true;
END $$;

REVOKE ALL ON FUNCTION tradeops_read_order(text, text, bigint, text, text, text, bigint)
    FROM PUBLIC;
"""

# Migration 0019's read: the order as a composite value (orders_as_shown).
READ_ORDER_ROW = """
DROP FUNCTION tradeops_read_order(text, text, bigint, text, text, text, bigint);
DROP FUNCTION tradeops_json_compact(jsonb);
DROP FUNCTION tradeops_json_time(timestamptz);

CREATE FUNCTION tradeops_read_order(text, text, bigint, text, text, text, bigint)
RETURNS TABLE (caller tradeops_principal, found orders_as_shown)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    who tradeops_principal;
BEGIN
    SELECT * INTO who FROM tradeops_authenticate($1, $2, $3, $4, $5, $6);
    IF NOT FOUND THEN
        RETURN;  -- no principal: nothing is read
    END IF;
    RETURN QUERY SELECT who, (SELECT shown FROM orders_as_shown shown
                              WHERE shown.id = $7
                                AND (who.all_desks OR shown.desk_id = ANY(who.desk_ids)));
END $$;

REVOKE ALL ON FUNCTION tradeops_read_order(text, text, bigint, text, text, text, bigint)
    FROM PUBLIC;
"""


def upgrade() -> None:
    op.execute(READ_ORDER_DOCUMENT)


def downgrade() -> None:
    op.execute(READ_ORDER_ROW)
