"""executions and positions

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24

Fills and what they do to clients' holdings. An execution is recorded once per external id
(the venue's fill id) and never changed; a trigger refuses a fill of an order that is not
APPROVED or PARTIALLY_FILLED, off the instrument's lot size, or through the order's limit
price, and the orders CHECK filled_quantity <= quantity refuses an overfill. New CHECKs on
orders tie the status to the filled quantity. A position is a client's signed quantity of an
instrument with its cost basis, average cost and realized P&L (average-cost method); its desk
is the client's (a composite foreign key checks it, and carries it along if the client
moves). Both tables carry the desk for row-level security: everyone reads their desks' rows;
only an admin (or an admin's key) or the system records fills and changes positions.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RULES = r"""
CREATE FUNCTION executions_enforce_order_rules() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    o orders%ROWTYPE;
    lot numeric;
BEGIN
    SELECT * INTO o FROM orders WHERE id = NEW.order_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown order' USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF o.status NOT IN ('APPROVED', 'PARTIALLY_FILLED') THEN
        RAISE EXCEPTION 'order % is %, not fillable', o.id, o.status
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT lot_size INTO lot FROM instruments WHERE id = o.instrument_id;
    IF mod(NEW.quantity, lot) <> 0 THEN
        RAISE EXCEPTION 'fill quantity is not a multiple of the lot size'
            USING ERRCODE = 'check_violation';
    END IF;
    IF o.order_type = 'LIMIT' AND (
        (o.side = 'BUY' AND NEW.price > o.price) OR (o.side = 'SELL' AND NEW.price < o.price)
    ) THEN
        RAISE EXCEPTION 'fill price is through the limit price' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER executions_order_rules BEFORE INSERT ON executions
    FOR EACH ROW EXECUTE FUNCTION executions_enforce_order_rules();
"""

POLICIES_AND_GRANTS = """
CREATE POLICY executions_read ON executions FOR SELECT USING (tradeops_can_see_desk(desk_id));
CREATE POLICY executions_record ON executions FOR INSERT WITH CHECK (
    tradeops_can_see_desk(desk_id) AND tradeops_role() IN ('admin', 'system')
    AND recorded_by = tradeops_user_id());
CREATE POLICY positions_read ON positions FOR SELECT USING (tradeops_can_see_desk(desk_id));
CREATE POLICY positions_open ON positions FOR INSERT WITH CHECK (
    tradeops_can_see_desk(desk_id) AND tradeops_role() IN ('admin', 'system'));
CREATE POLICY positions_change ON positions FOR UPDATE
    USING (tradeops_can_see_desk(desk_id) AND tradeops_role() IN ('admin', 'system'))
    WITH CHECK (tradeops_can_see_desk(desk_id) AND tradeops_role() IN ('admin', 'system'));

GRANT SELECT, INSERT ON executions TO tradeops_app;
GRANT SELECT, INSERT, UPDATE ON positions TO tradeops_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO tradeops_app;
"""

ORDER_FILL_CHECKS = {
    "filled_status": "status <> 'FILLED' OR filled_quantity = quantity",
    "partially_filled_status": (
        "status <> 'PARTIALLY_FILLED' OR (filled_quantity > 0 AND filled_quantity < quantity)"
    ),
    "avg_fill_price_when_filled": "(filled_quantity = 0) = (avg_fill_price IS NULL)",
}


def upgrade() -> None:
    op.create_table(
        "executions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("order_id", sa.BigInteger(), nullable=False),
        sa.Column("desk_id", sa.BigInteger(), nullable=False),
        sa.Column("quantity", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("price", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("venue", sa.Text(), nullable=False),
        sa.Column("executed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("external_id", sa.Text(), nullable=False),
        sa.Column("recorded_by", sa.BigInteger(), nullable=False),
        sa.Column("recorded_by_key_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_executions_quantity_positive")),
        sa.CheckConstraint("price > 0", name=op.f("ck_executions_price_positive")),
        sa.CheckConstraint("length(venue) BETWEEN 1 AND 64", name=op.f("ck_executions_venue")),
        sa.CheckConstraint(
            "external_id ~ '^[\\x21-\\x7E]{1,128}$'", name=op.f("ck_executions_external_id")
        ),
        sa.ForeignKeyConstraint(
            ["order_id", "desk_id"],
            ["orders.id", "orders.desk_id"],
            name=op.f("fk_executions_order_id_orders"),
        ),
        sa.ForeignKeyConstraint(
            ["recorded_by"], ["users.id"], name=op.f("fk_executions_recorded_by_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_executions")),
        sa.UniqueConstraint("venue", "external_id", name=op.f("uq_executions_venue_external_id")),
    )
    op.create_index(
        "ix_executions_order_id_executed_at",
        "executions",
        ["order_id", "executed_at"],
        unique=False,
    )
    op.create_table(
        "positions",
        sa.Column("client_id", sa.BigInteger(), nullable=False),
        sa.Column("instrument_id", sa.BigInteger(), nullable=False),
        sa.Column("desk_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "quantity", sa.Numeric(precision=20, scale=6), server_default="0", nullable=False
        ),
        sa.Column("avg_cost", sa.Numeric(precision=30, scale=10), nullable=True),
        sa.Column(
            "cost_basis", sa.Numeric(precision=40, scale=12), server_default="0", nullable=False
        ),
        sa.Column(
            "realized_pnl",
            sa.Numeric(precision=40, scale=12),
            server_default="0",
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(quantity = 0) = (avg_cost IS NULL)", name=op.f("ck_positions_avg_cost_when_open")
        ),
        sa.CheckConstraint(
            "avg_cost IS NULL OR avg_cost > 0", name=op.f("ck_positions_avg_cost_positive")
        ),
        sa.CheckConstraint(
            "sign(cost_basis) = sign(quantity)", name=op.f("ck_positions_cost_basis_sign")
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_positions_version_positive")),
        sa.ForeignKeyConstraint(
            ["client_id", "desk_id"],
            ["clients.id", "clients.desk_id"],
            name=op.f("fk_positions_client_id_clients"),
            onupdate="CASCADE",
        ),
        sa.ForeignKeyConstraint(["desk_id"], ["desks.id"], name=op.f("fk_positions_desk_id_desks")),
        sa.ForeignKeyConstraint(
            ["instrument_id"],
            ["instruments.id"],
            name=op.f("fk_positions_instrument_id_instruments"),
        ),
        sa.PrimaryKeyConstraint("client_id", "instrument_id", name=op.f("pk_positions")),
    )
    op.create_index(op.f("ix_positions_desk_id"), "positions", ["desk_id"], unique=False)
    op.create_index(
        op.f("ix_positions_instrument_id"), "positions", ["instrument_id"], unique=False
    )
    for name, condition in ORDER_FILL_CHECKS.items():
        op.create_check_constraint(op.f(f"ck_orders_{name}"), "orders", condition)
    op.execute(RULES)
    for table in ("executions", "positions"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(POLICIES_AND_GRANTS)


def downgrade() -> None:
    for name in ORDER_FILL_CHECKS:
        op.drop_constraint(op.f(f"ck_orders_{name}"), "orders")
    op.drop_index(op.f("ix_positions_instrument_id"), table_name="positions")
    op.drop_index(op.f("ix_positions_desk_id"), table_name="positions")
    op.drop_table("positions")  # its policies and grants go with it
    op.drop_index("ix_executions_order_id_executed_at", table_name="executions")
    op.drop_table("executions")
    op.execute("DROP FUNCTION executions_enforce_order_rules()")
