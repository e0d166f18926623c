"""GET /orders/{id}/events in one statement

Revision ID: 0037
Revises: 0036
Create Date: 2026-11-29

Issue 15: "a read needs one" round trip. An order's history took five: BEGIN, authenticate,
the order (found, on the caller's desks), its events, COMMIT. `tradeops_read_order_history`
reads it in one, as tradeops_read_order (0019) reads the order: it authenticates with the
function every request's first statement calls (which switches to the application role and
publishes the caller's context, transaction-local), and only for a principal found reads the
order under row-level security and the caller's desk condition, and its events oldest first,
as one JSON array (its times written as tradeops_json_time writes them, UTC with a Z). The
history is NULL when no such order is visible to the caller; the application answers 404.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0037"
down_revision: str | None = "0036"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READ_ORDER_HISTORY = "tradeops_read_order_history(text, text, bigint, text, text, text, bigint)"
FUNCTION = f"""
-- $1/$2 an API key's prefix and hash, or NULL and $3/$4 a person's id and e-mail; $5 the
-- application role, $6 the request id, $7 the order. One row when the credentials name a
-- principal: `caller`, and the order's `history` (NULL when no such order is visible).
CREATE FUNCTION {READ_ORDER_HISTORY}
RETURNS TABLE (caller tradeops_principal, history jsonb)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    who tradeops_principal;
BEGIN
    SELECT * INTO who FROM tradeops_authenticate($1, $2, $3, $4, $5, $6);
    IF NOT FOUND THEN
        RETURN;  -- no principal: nothing is read
    END IF;
    -- A statement of its own, after the switch: row-level security applies to every row.
    RETURN QUERY SELECT who, CASE WHEN o.id IS NOT NULL THEN (
        SELECT COALESCE(jsonb_agg(jsonb_build_object(
                   'seq', e.seq, 'type', e.type, 'actor', e.actor, 'payload', e.payload,
                   'at', tradeops_json_time(e.at)) ORDER BY e.seq), '[]')
        FROM order_events e WHERE e.order_id = o.id) END
    FROM (SELECT 1) AS one
    LEFT JOIN orders o ON o.id = $7 AND (who.all_desks OR o.desk_id = ANY(who.desk_ids));
END $$;

REVOKE ALL ON FUNCTION {READ_ORDER_HISTORY} FROM PUBLIC;
"""  # noqa: S608 - SQL from this code only


def upgrade() -> None:
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {READ_ORDER_HISTORY}")
