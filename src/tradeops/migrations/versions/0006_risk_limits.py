"""risk limits

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23

Limits for the pre-trade risk check: one row per desk and one per client (on the client's
desk, checked by a composite foreign key). Risk officers manage them; risk and admin read
them. The check itself runs as the system, which reads every row.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICIES_AND_GRANTS = """
CREATE POLICY risk_limits_read ON risk_limits FOR SELECT
    USING (tradeops_role() IN ('risk', 'admin', 'system'));
CREATE POLICY risk_limits_set ON risk_limits FOR INSERT
    WITH CHECK (tradeops_role() IN ('risk', 'system'));
CREATE POLICY risk_limits_change ON risk_limits FOR UPDATE
    USING (tradeops_role() IN ('risk', 'system'));
GRANT SELECT, INSERT, UPDATE ON risk_limits TO tradeops_app;
"""


def upgrade() -> None:
    op.create_unique_constraint(op.f("uq_clients_id_desk_id"), "clients", ["id", "desk_id"])
    op.create_table(
        "risk_limits",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("desk_id", sa.BigInteger(), nullable=False),
        sa.Column("client_id", sa.BigInteger(), nullable=True),
        sa.Column("max_order_notional", sa.Numeric(precision=20, scale=6), nullable=True),
        sa.Column("max_position", sa.Numeric(precision=20, scale=6), nullable=True),
        sa.Column("fat_finger_pct", sa.Numeric(precision=7, scale=4), nullable=True),
        sa.Column("updated_by", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "max_order_notional IS NULL OR max_order_notional > 0",
            name=op.f("ck_risk_limits_max_order_notional"),
        ),
        sa.CheckConstraint(
            "max_position IS NULL OR max_position > 0", name=op.f("ck_risk_limits_max_position")
        ),
        sa.CheckConstraint(
            "fat_finger_pct IS NULL OR (fat_finger_pct > 0 AND fat_finger_pct <= 100)",
            name=op.f("ck_risk_limits_fat_finger_pct"),
        ),
        sa.ForeignKeyConstraint(
            ["client_id", "desk_id"],
            ["clients.id", "clients.desk_id"],
            name=op.f("fk_risk_limits_client_id_clients"),
            onupdate="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["desk_id"], ["desks.id"], name=op.f("fk_risk_limits_desk_id_desks")
        ),
        sa.ForeignKeyConstraint(
            ["updated_by"], ["users.id"], name=op.f("fk_risk_limits_updated_by_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_limits")),
        sa.UniqueConstraint(
            "desk_id",
            "client_id",
            name=op.f("uq_risk_limits_desk_id_client_id"),
            postgresql_nulls_not_distinct=True,
        ),
    )
    op.execute("ALTER TABLE risk_limits ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE risk_limits FORCE ROW LEVEL SECURITY")
    op.execute(POLICIES_AND_GRANTS)


def downgrade() -> None:
    op.drop_table("risk_limits")  # its policies and grants go with it
    op.drop_constraint(op.f("uq_clients_id_desk_id"), "clients", type_="unique")
