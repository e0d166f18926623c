"""each instrument's latest price in a table of its own, for the portfolio

Revision ID: 0042
Revises: 0041
Create Date: 2026-11-29

Issue 15, the portfolio of 500 positions (p99 < 20 ms at 4 connections). Its document
valued each position with the first entry of ix_market_snapshots_latest for the position's
instrument: a lateral index walk per position, about a third of the document's cost in
PostgreSQL (bench book: 3.2 ms a document against 2.1 with a key lookup, 300 documents,
four alternations on this machine).

`latest_prices` holds, per instrument, that entry: the snapshot latest by as_of, ties broken
by the later row (the readers' rule, models.MarketSnapshot's index). A statement-level
trigger on market_snapshots keeps it in the inserting statement, from the rows it inserted:
the latest of them per instrument replaces the one held only when it is later, so a batch
of old prices changes nothing. Its rows are upserted in instrument order, so two batches
that touch the same instruments queue on them in one order and cannot deadlock; a batch
waits for an overlapping one's commit at most the publisher's lock_timeout, as it already
did for a snapshot resent in both. The trigger's function runs as the table's owner: the
application role may read the table and never write it, so no request can set a price
without its snapshot. A snapshot held as latest cannot be deleted (its foreign key), so the
table cannot point past the snapshots.

`tradeops_portfolio_document` (0022) joins it in place of the walk: its installed text is
changed there and nowhere else, and refused if it is not the text 0022 installed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0042"
down_revision: str | None = "0041"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEPT = """
INSERT INTO latest_prices (instrument_id, snapshot_id, price, as_of)
SELECT DISTINCT ON (m.instrument_id) m.instrument_id, m.id, m.price, m.as_of
FROM {source} m ORDER BY m.instrument_id, m.as_of DESC, m.id DESC
ON CONFLICT (instrument_id) DO UPDATE
    SET snapshot_id = excluded.snapshot_id, price = excluded.price, as_of = excluded.as_of
    WHERE (excluded.as_of, excluded.snapshot_id)
        > (latest_prices.as_of, latest_prices.snapshot_id)
"""

# pg_temp last: a temporary table of the publisher's cannot stand in for latest_prices.
TRIGGER = f"""
CREATE FUNCTION market_snapshots_keep_latest() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    {KEPT.format(source="added")};
    RETURN NULL;
END $$;

CREATE TRIGGER market_snapshots_keep_latest AFTER INSERT ON market_snapshots
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION market_snapshots_keep_latest();

ALTER TABLE latest_prices ENABLE ROW LEVEL SECURITY;
ALTER TABLE latest_prices FORCE ROW LEVEL SECURITY;
-- Read as market_snapshots are, by anyone authenticated; written by the trigger alone, as
-- the table's owner (the application role has no grant to write it either).
CREATE POLICY latest_prices_read ON latest_prices FOR SELECT
    USING (current_user <> 'tradeops_app' OR tradeops_user_id() IS NOT NULL);
CREATE POLICY latest_prices_kept ON latest_prices FOR ALL
    USING (current_user <> 'tradeops_app');
GRANT SELECT ON latest_prices TO tradeops_app;
"""

DOCUMENT = "tradeops_portfolio_document(text, boolean, bigint[])"
WALK = """LEFT JOIN LATERAL (
                SELECT m.price, m.as_of FROM market_snapshots m
                WHERE m.instrument_id = p.instrument_id ORDER BY m.as_of DESC, m.id DESC LIMIT 1
            ) s ON true"""
LOOKUP = "LEFT JOIN latest_prices s ON s.instrument_id = p.instrument_id"

# The document's installed text with `old` replaced by `new`; refused if `old` is not in it.
SWAP = """
DO $swap$
DECLARE
    body text := pg_get_functiondef('{document}'::regprocedure);
BEGIN
    IF strpos(body, $old${old}$old$) = 0 THEN
        RAISE EXCEPTION 'tradeops_portfolio_document is not the text this migration changes';
    END IF;
    EXECUTE replace(body, $old${old}$old$, $new${new}$new$);
END $swap$;
"""


def upgrade() -> None:
    op.create_table(
        "latest_prices",
        sa.Column("instrument_id", sa.BigInteger(), nullable=False),
        sa.Column("snapshot_id", sa.BigInteger(), nullable=False),
        sa.Column("price", sa.Numeric(20, 6), nullable=False),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("price > 0", name=op.f("ck_latest_prices_price_positive")),
        sa.ForeignKeyConstraint(
            ["instrument_id"],
            ["instruments.id"],
            name=op.f("fk_latest_prices_instrument_id_instruments"),
        ),
        sa.ForeignKeyConstraint(
            ["snapshot_id"],
            ["market_snapshots.id"],
            name=op.f("fk_latest_prices_snapshot_id_market_snapshots"),
        ),
        sa.PrimaryKeyConstraint("instrument_id", name=op.f("pk_latest_prices")),
        sa.UniqueConstraint("snapshot_id", name=op.f("uq_latest_prices_snapshot_id")),
    )
    op.execute(TRIGGER)
    op.execute(KEPT.format(source="market_snapshots"))
    op.execute(SWAP.format(document=DOCUMENT, old=WALK, new=LOOKUP))


def downgrade() -> None:
    op.execute(SWAP.format(document=DOCUMENT, old=LOOKUP, new=WALK))
    op.execute("DROP TRIGGER market_snapshots_keep_latest ON market_snapshots")
    op.execute("DROP FUNCTION market_snapshots_keep_latest()")
    op.drop_table("latest_prices")
