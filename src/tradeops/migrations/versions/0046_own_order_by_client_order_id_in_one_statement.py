"""GET /orders:by_client_order_id (your own order) in one statement

Revision ID: 0046
Revises: 0045
Create Date: 2026-11-29

Issue 15: "a read needs one" round trip. An agent that is unsure whether its order was
recorded asks for it by the client_order_id it gave: four round trips (BEGIN, authenticate,
the read, COMMIT). `tradeops_read_own_order` reads it in one, as tradeops_read_order (0019)
reads an order by id: it authenticates with the function every request's first statement
calls, and only for a principal found reads the caller's own order under that
client_order_id (uq_orders_created_by_client_order_id: one at most), on the caller's desks and under
row-level security, as GET /orders/{id} writes it (tradeops_order_document, 0035). When the
caller has no such order the document is NULL, and the application answers in its
transaction as before: 404, or for an approver the one order of their desks under it.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0046"
down_revision: str | None = "0045"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READ_OWN_ORDER = "tradeops_read_own_order(text, text, bigint, text, text, text, text)"
FUNCTION = f"""
-- $1/$2 an API key's prefix and hash, or NULL and $3/$4 a person's id and e-mail; $5 the
-- application role, $6 the request id, $7 the client_order_id. One row when the credentials
-- name a principal: `caller`, and their order's `version` and `document` (NULL when they
-- have none under it on their desks).
CREATE FUNCTION {READ_OWN_ORDER}
RETURNS TABLE (caller tradeops_principal, version integer, document text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    who tradeops_principal;
BEGIN
    SELECT * INTO who FROM tradeops_authenticate($1, $2, $3, $4, $5, $6);
    IF NOT FOUND THEN
        RETURN;  -- no principal: nothing is read
    END IF;
    -- A statement of its own, after the switch: row-level security applies to every row.
    RETURN QUERY SELECT who, read.version, read.document FROM (SELECT 1) AS one
    LEFT JOIN orders o ON o.created_by = who.user_id AND o.client_order_id = $7
    LEFT JOIN LATERAL tradeops_order_document(o.id, who.all_desks, who.desk_ids) AS read
        ON true;
END $$;

REVOKE ALL ON FUNCTION {READ_OWN_ORDER} FROM PUBLIC;
"""  # noqa: S608 - SQL from this code only


def upgrade() -> None:
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {READ_OWN_ORDER}")
