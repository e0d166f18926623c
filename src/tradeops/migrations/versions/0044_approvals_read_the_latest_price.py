"""a MARKET order's approvals read the latest price from latest_prices

Revision ID: 0044
Revises: 0043
Create Date: 2026-11-29

Migration 0042 keeps each instrument's latest price in latest_prices; the portfolio, the
risk check, the fill simulator and GET /market-data/{symbol} read it there (the
last three in the application's own statements). `tradeops_approvals_required` (0034), the
trigger's rule of how many approvals an order needs, still valued a MARKET order at the
first snapshot by `as_of DESC` alone: of two prices quoted at the same moment by two
sources, whichever the scan met first, where every other reader takes the one received
last. It now reads latest_prices too, so the latest price has one source and one rule.

Its installed text is changed at that one statement and nowhere else, and refused if it is
not the text 0034 installed.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0044"
down_revision: str | None = "0043"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = "tradeops_approvals_required(bigint, bigint, numeric, numeric)"
WALK = """SELECT m.price INTO price FROM market_snapshots m WHERE m.instrument_id = order_instrument
        ORDER BY m.as_of DESC LIMIT 1;"""
LOOKUP = "SELECT l.price INTO price FROM latest_prices l WHERE l.instrument_id = order_instrument;"

# The function's installed text with `old` replaced by `new`; refused if `old` is not in it.
SWAP = """
DO $swap$
DECLARE
    body text := pg_get_functiondef('{function}'::regprocedure);
BEGIN
    IF strpos(body, $old${old}$old$) = 0 THEN
        RAISE EXCEPTION 'tradeops_approvals_required is not the text this migration changes';
    END IF;
    EXECUTE replace(body, $old${old}$old$, $new${new}$new$);
END $swap$;
"""


def upgrade() -> None:
    op.execute(SWAP.format(function=FUNCTION, old=WALK, new=LOOKUP))


def downgrade() -> None:
    op.execute(SWAP.format(function=FUNCTION, old=LOOKUP, new=WALK))
