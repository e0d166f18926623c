"""GET /market-data/{symbol} (an instrument's latest price) in one statement

Revision ID: 0045
Revises: 0044
Create Date: 2026-11-29

Issue 15: "a read needs one" round trip, and the mission's "market-data reads are
low-latency for dashboards and agents". An instrument's latest price took four: BEGIN,
authenticate, the read, COMMIT. `tradeops_read_latest_price` reads it in one, as
tradeops_read_order (0019) reads an order: it authenticates with the function every
request's first statement calls (which switches to the application role and publishes the
caller's context, transaction-local), and only for a principal found reads the price as
marketdata.repository.LATEST does (latest_prices and its snapshot, 0042), under row-level
security. The price's columns are NULL when the symbol is unknown or has no price (404).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0045"
down_revision: str | None = "0044"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READ_LATEST_PRICE = "tradeops_read_latest_price(text, text, bigint, text, text, text, text)"
FUNCTION = f"""
-- $1/$2 an API key's prefix and hash, or NULL and $3/$4 a person's id and e-mail; $5 the
-- application role, $6 the request id, $7 the symbol (upper case). One row when the
-- credentials name a principal: `caller`, and the latest snapshot's columns (NULL when there
-- is none).
CREATE FUNCTION {READ_LATEST_PRICE}
RETURNS TABLE (caller tradeops_principal, symbol text, price numeric, bid numeric,
               ask numeric, as_of timestamptz, source text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    who tradeops_principal;
BEGIN
    SELECT * INTO who FROM tradeops_authenticate($1, $2, $3, $4, $5, $6);
    IF NOT FOUND THEN
        RETURN;  -- no principal: nothing is read
    END IF;
    -- A statement of its own, after the switch: row-level security applies to every row.
    RETURN QUERY SELECT who, latest.* FROM (SELECT 1) AS one
    LEFT JOIN (
        SELECT i.symbol, s.price, s.bid, s.ask, s.as_of, s.source FROM instruments i
        JOIN latest_prices l ON l.instrument_id = i.id
        JOIN market_snapshots s ON s.id = l.snapshot_id
        WHERE i.symbol = $7
    ) AS latest ON true;
END $$;

REVOKE ALL ON FUNCTION {READ_LATEST_PRICE} FROM PUBLIC;
"""  # noqa: S608 - SQL from this code only


def upgrade() -> None:
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {READ_LATEST_PRICE}")
