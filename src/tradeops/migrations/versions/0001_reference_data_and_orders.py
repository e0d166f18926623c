"""reference data and orders

Revision ID: 0001
Revises:
Create Date: 2026-11-23

The application role tradeops_app, the reference tables, orders with a CHECK for every rule
the API enforces, and a trigger for the rules that need the instrument or client row.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Roles are cluster-wide: create once, never drop (other databases on the server may use it).
CREATE_APP_ROLE = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tradeops_app') THEN
        CREATE ROLE tradeops_app NOLOGIN NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (
        SELECT FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
        WHERE r.rolname = 'tradeops_app' AND m.member = (SELECT oid FROM pg_roles WHERE rolname = current_user)
    ) AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT tradeops_app TO %I', current_user);
    END IF;
END $$;
"""

# Rules that need the instrument's or client's row, enforced where no code path can skip them.
ORDER_RULES_FUNCTION = """
CREATE FUNCTION orders_enforce_instrument_rules() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ins instruments%ROWTYPE;
    cli clients%ROWTYPE;
BEGIN
    SELECT * INTO ins FROM instruments WHERE id = NEW.instrument_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown instrument' USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT * INTO cli FROM clients WHERE id = NEW.client_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown client' USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF TG_OP = 'INSERT' AND NOT ins.active THEN
        RAISE EXCEPTION 'instrument % is not active', ins.symbol USING ERRCODE = 'check_violation';
    END IF;
    IF TG_OP = 'INSERT' AND cli.status <> 'ACTIVE' THEN
        RAISE EXCEPTION 'client % is not active', cli.external_id USING ERRCODE = 'check_violation';
    END IF;
    IF mod(NEW.quantity, ins.lot_size) <> 0 THEN
        RAISE EXCEPTION 'quantity is not a multiple of the lot size' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.price IS NOT NULL AND mod(NEW.price, ins.tick_size) <> 0 THEN
        RAISE EXCEPTION 'price is not a multiple of the tick size' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.currency <> ins.currency THEN
        RAISE EXCEPTION 'currency differs from the instrument' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.desk_id <> cli.desk_id THEN
        RAISE EXCEPTION 'desk differs from the client''s desk' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
"""

GRANTS = """
GRANT USAGE ON SCHEMA public TO tradeops_app;
GRANT SELECT, INSERT, UPDATE ON desks, users, clients, instruments, orders TO tradeops_app;
GRANT SELECT, INSERT, DELETE ON desk_members TO tradeops_app;
GRANT SELECT, INSERT ON order_events TO tradeops_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO tradeops_app;
"""


def upgrade() -> None:
    op.create_table(
        "desks",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_desks")),
        sa.UniqueConstraint("code", name=op.f("uq_desks_code")),
    )
    op.create_table(
        "instruments",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("asset_class", sa.Text(), server_default="EQUITY", nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("lot_size", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("tick_size", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("restricted", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
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
            "asset_class IN ('EQUITY', 'ETF', 'BOND', 'FX', 'FUTURE', 'OPTION')",
            name=op.f("ck_instruments_asset_class"),
        ),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name=op.f("ck_instruments_currency")),
        sa.CheckConstraint(
            "symbol ~ '^[A-Z0-9][A-Z0-9.\\-/]{0,31}$'", name=op.f("ck_instruments_symbol")
        ),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 200", name=op.f("ck_instruments_name")),
        sa.CheckConstraint("lot_size > 0", name=op.f("ck_instruments_lot_size_positive")),
        sa.CheckConstraint("tick_size > 0", name=op.f("ck_instruments_tick_size_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instruments")),
        sa.UniqueConstraint("symbol", name=op.f("uq_instruments_symbol")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False, start=1), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "email = lower(email) AND position('@' IN email) > 1", name=op.f("ck_users_email")
        ),
        sa.CheckConstraint(
            "role IN ('trader', 'agent', 'approver', 'risk', 'admin', 'system')",
            name=op.f("ck_users_role"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    op.create_table(
        "clients",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("external_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("desk_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), server_default="ACTIVE", nullable=False),
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
            "external_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'", name=op.f("ck_clients_external_id")
        ),
        sa.CheckConstraint("status IN ('ACTIVE', 'INACTIVE')", name=op.f("ck_clients_status")),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 200", name=op.f("ck_clients_name")),
        sa.ForeignKeyConstraint(["desk_id"], ["desks.id"], name=op.f("fk_clients_desk_id_desks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clients")),
        sa.UniqueConstraint("external_id", name=op.f("uq_clients_external_id")),
    )
    op.create_index(op.f("ix_clients_desk_id"), "clients", ["desk_id"], unique=False)
    op.create_table(
        "desk_members",
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("desk_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["desk_id"],
            ["desks.id"],
            name=op.f("fk_desk_members_desk_id_desks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_desk_members_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "desk_id", name=op.f("pk_desk_members")),
    )
    op.create_index(op.f("ix_desk_members_desk_id"), "desk_members", ["desk_id"], unique=False)
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("desk_id", sa.BigInteger(), nullable=False),
        sa.Column("client_id", sa.BigInteger(), nullable=False),
        sa.Column("instrument_id", sa.BigInteger(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("order_type", sa.Text(), nullable=False),
        sa.Column("time_in_force", sa.Text(), server_default="DAY", nullable=False),
        sa.Column("quantity", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("price", sa.Numeric(precision=20, scale=6), nullable=True),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="PENDING", nullable=False),
        sa.Column("risk_status", sa.Text(), server_default="PENDING", nullable=False),
        sa.Column(
            "risk_reasons",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "filled_quantity", sa.Numeric(precision=20, scale=6), server_default="0", nullable=False
        ),
        sa.Column("avg_fill_price", sa.Numeric(precision=20, scale=6), nullable=True),
        sa.Column("client_order_id", sa.Text(), nullable=True),
        sa.Column("created_by", sa.BigInteger(), nullable=False),
        sa.Column("created_by_key_id", sa.BigInteger(), nullable=True),
        sa.Column("reviewed_by", sa.BigInteger(), nullable=True),
        sa.Column("approved_by", sa.BigInteger(), nullable=True),
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
            "(order_type = 'LIMIT') = (price IS NOT NULL)",
            name=op.f("ck_orders_price_matches_type"),
        ),
        sa.CheckConstraint(
            "client_order_id IS NULL OR client_order_id ~ '^[\\x21-\\x7E]{1,64}$'",
            name=op.f("ck_orders_client_order_id"),
        ),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name=op.f("ck_orders_currency")),
        sa.CheckConstraint("order_type IN ('LIMIT', 'MARKET')", name=op.f("ck_orders_order_type")),
        sa.CheckConstraint(
            "risk_status IN ('PENDING', 'PASSED', 'FAILED')", name=op.f("ck_orders_risk_status")
        ),
        sa.CheckConstraint("side IN ('BUY', 'SELL')", name=op.f("ck_orders_side")),
        sa.CheckConstraint(
            "status IN ('PENDING', 'REVIEWED', 'APPROVED', 'PARTIALLY_FILLED', 'FILLED', 'REJECTED', 'CANCELLED')",
            name=op.f("ck_orders_status"),
        ),
        sa.CheckConstraint(
            "time_in_force IN ('DAY', 'GTC', 'IOC', 'FOK')", name=op.f("ck_orders_time_in_force")
        ),
        sa.CheckConstraint(
            "filled_quantity >= 0 AND filled_quantity <= quantity",
            name=op.f("ck_orders_filled_within_quantity"),
        ),
        sa.CheckConstraint("price IS NULL OR price > 0", name=op.f("ck_orders_price_positive")),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_orders_quantity_positive")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_orders_version_positive")),
        sa.ForeignKeyConstraint(
            ["approved_by"], ["users.id"], name=op.f("fk_orders_approved_by_users")
        ),
        sa.ForeignKeyConstraint(
            ["client_id"], ["clients.id"], name=op.f("fk_orders_client_id_clients")
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_orders_created_by_users")
        ),
        sa.ForeignKeyConstraint(["desk_id"], ["desks.id"], name=op.f("fk_orders_desk_id_desks")),
        sa.ForeignKeyConstraint(
            ["instrument_id"], ["instruments.id"], name=op.f("fk_orders_instrument_id_instruments")
        ),
        sa.ForeignKeyConstraint(
            ["reviewed_by"], ["users.id"], name=op.f("fk_orders_reviewed_by_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint(
            "created_by", "client_order_id", name=op.f("uq_orders_created_by_client_order_id")
        ),
        sa.UniqueConstraint("id", "desk_id", name=op.f("uq_orders_id_desk_id")),
    )
    op.create_index("ix_orders_client_id_id", "orders", ["client_id", "id"], unique=False)
    op.create_index("ix_orders_desk_id_id", "orders", ["desk_id", "id"], unique=False)
    op.create_index(op.f("ix_orders_instrument_id"), "orders", ["instrument_id"], unique=False)
    op.create_index("ix_orders_status_id", "orders", ["status", "id"], unique=False)
    op.create_table(
        "order_events",
        sa.Column("order_id", sa.BigInteger(), nullable=False),
        sa.Column("desk_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column(
            "payload",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["order_id", "desk_id"],
            ["orders.id", "orders.desk_id"],
            name=op.f("fk_order_events_order_id_orders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("order_id", "seq", name=op.f("pk_order_events")),
    )

    op.execute(CREATE_APP_ROLE)
    op.execute(ORDER_RULES_FUNCTION)
    op.execute(
        "CREATE TRIGGER orders_instrument_rules BEFORE INSERT OR UPDATE OF"
        " quantity, price, instrument_id, client_id, desk_id, currency ON orders"
        " FOR EACH ROW EXECUTE FUNCTION orders_enforce_instrument_rules()"
    )
    # The built-in actor for jobs, the CLI and demo loading; it has no password and cannot sign in.
    op.execute(
        "INSERT INTO users (id, email, name, role, active) OVERRIDING SYSTEM VALUE"
        " VALUES (0, 'system@tradeops', 'tradeops system', 'system', true)"
    )
    op.execute(GRANTS)


def downgrade() -> None:
    op.drop_table("order_events")
    op.execute("DROP FUNCTION IF EXISTS orders_enforce_instrument_rules() CASCADE")
    op.drop_index("ix_orders_status_id", table_name="orders")
    op.drop_index(op.f("ix_orders_instrument_id"), table_name="orders")
    op.drop_index("ix_orders_desk_id_id", table_name="orders")
    op.drop_index("ix_orders_client_id_id", table_name="orders")
    op.drop_table("orders")
    op.drop_index(op.f("ix_desk_members_desk_id"), table_name="desk_members")
    op.drop_table("desk_members")
    op.drop_index(op.f("ix_clients_desk_id"), table_name="clients")
    op.drop_table("clients")
    op.drop_table("users")
    op.drop_table("instruments")
    op.drop_table("desks")
