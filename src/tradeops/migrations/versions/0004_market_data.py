"""market data

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

The bank's prices per instrument: one row per (instrument, as_of, source), so a resent
snapshot changes nothing, and an index on (instrument_id, as_of DESC), so an instrument's
latest price is the first entry of an index scan. Anyone signed in may read prices; only an
admin (a person or an admin's key, whose scope the application checks) or the system may
publish them. Snapshots are never changed or deleted by the application.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICIES_AND_GRANTS = """
CREATE POLICY market_snapshots_read ON market_snapshots FOR SELECT
    USING (tradeops_user_id() IS NOT NULL);
CREATE POLICY market_snapshots_publish ON market_snapshots FOR INSERT
    WITH CHECK (tradeops_role() IN ('admin', 'system'));
GRANT SELECT, INSERT ON market_snapshots TO tradeops_app;
"""


def upgrade() -> None:
    op.create_table(
        "market_snapshots",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("instrument_id", sa.BigInteger(), nullable=False),
        sa.Column("price", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("bid", sa.Numeric(precision=20, scale=6), nullable=True),
        sa.Column("ask", sa.Numeric(precision=20, scale=6), nullable=True),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("ask IS NULL OR ask > 0", name=op.f("ck_market_snapshots_ask_positive")),
        sa.CheckConstraint(
            "bid IS NULL OR ask IS NULL OR bid <= ask",
            name=op.f("ck_market_snapshots_bid_not_above_ask"),
        ),
        sa.CheckConstraint("bid IS NULL OR bid > 0", name=op.f("ck_market_snapshots_bid_positive")),
        sa.CheckConstraint(
            "length(source) BETWEEN 1 AND 64", name=op.f("ck_market_snapshots_source")
        ),
        sa.CheckConstraint("price > 0", name=op.f("ck_market_snapshots_price_positive")),
        sa.ForeignKeyConstraint(
            ["instrument_id"],
            ["instruments.id"],
            name=op.f("fk_market_snapshots_instrument_id_instruments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_market_snapshots")),
        sa.UniqueConstraint(
            "instrument_id",
            "as_of",
            "source",
            name=op.f("uq_market_snapshots_instrument_id_as_of_source"),
        ),
    )
    op.create_index(
        "ix_market_snapshots_instrument_id_as_of",
        "market_snapshots",
        ["instrument_id", sa.literal_column("as_of DESC")],
        unique=False,
    )
    op.execute("ALTER TABLE market_snapshots ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE market_snapshots FORCE ROW LEVEL SECURITY")
    op.execute(POLICIES_AND_GRANTS)


def downgrade() -> None:
    op.drop_index("ix_market_snapshots_instrument_id_as_of", table_name="market_snapshots")
    op.drop_table("market_snapshots")  # its policies and grants go with it
