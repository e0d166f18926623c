"""identity, api keys and row-level security

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

API keys, login throttling columns, and row-level security on every table: policies read the
transaction's context (set with set_config(..., true)) through small SQL functions that fail
closed when it is missing or empty.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RLS_TABLES = [
    "desks",
    "users",
    "desk_members",
    "clients",
    "instruments",
    "orders",
    "order_events",
    "api_keys",
]

# Authentication runs as the login role before the switch to tradeops_app; the identity
# tables let that role through (a superuser would bypass them anyway), never the app role.
#
# Plain (not SECURITY DEFINER) SQL functions, inlined by the planner. An unset or empty
# setting (a pooled connection reads back '' once set) yields no user and no desks.
CONTEXT_FUNCTIONS = """
CREATE FUNCTION tradeops_user_id() RETURNS bigint LANGUAGE sql STABLE AS
    $$ SELECT NULLIF(current_setting('tradeops.user_id', true), '')::bigint $$;
CREATE FUNCTION tradeops_role() RETURNS text LANGUAGE sql STABLE AS
    $$ SELECT CASE WHEN tradeops_user_id() IS NOT NULL
               THEN NULLIF(current_setting('tradeops.role', true), '') END $$;
CREATE FUNCTION tradeops_all_desks() RETURNS boolean LANGUAGE sql STABLE AS
    $$ SELECT tradeops_user_id() IS NOT NULL
              AND COALESCE(NULLIF(current_setting('tradeops.all_desks', true), '')::boolean, false) $$;
CREATE FUNCTION tradeops_desk_ids() RETURNS bigint[] LANGUAGE sql STABLE AS
    $$ SELECT CASE WHEN tradeops_user_id() IS NULL THEN '{}'::bigint[]
               ELSE COALESCE(NULLIF(current_setting('tradeops.desk_ids', true), '')::bigint[], '{}')
               END $$;
CREATE FUNCTION tradeops_can_see_desk(desk bigint) RETURNS boolean LANGUAGE sql STABLE AS
    $$ SELECT tradeops_all_desks() OR desk = ANY(tradeops_desk_ids()) $$;
"""

POLICIES = """
CREATE POLICY desks_read ON desks FOR SELECT USING (tradeops_user_id() IS NOT NULL);
CREATE POLICY desks_write ON desks FOR INSERT WITH CHECK (tradeops_role() IN ('admin', 'system'));
CREATE POLICY desks_change ON desks FOR UPDATE USING (tradeops_role() IN ('admin', 'system'));

CREATE POLICY users_read ON users FOR SELECT
    USING (current_user <> 'tradeops_app' OR tradeops_user_id() IS NOT NULL);
CREATE POLICY users_write ON users FOR INSERT WITH CHECK (tradeops_role() IN ('admin', 'system'));
CREATE POLICY users_change ON users FOR UPDATE
    USING (current_user <> 'tradeops_app' OR tradeops_role() IN ('admin', 'system'));

CREATE POLICY desk_members_read ON desk_members FOR SELECT
    USING (current_user <> 'tradeops_app' OR user_id = tradeops_user_id()
           OR tradeops_role() IN ('admin', 'risk', 'system'));
CREATE POLICY desk_members_write ON desk_members FOR INSERT
    WITH CHECK (tradeops_role() IN ('admin', 'system'));
CREATE POLICY desk_members_remove ON desk_members FOR DELETE
    USING (tradeops_role() IN ('admin', 'system'));

CREATE POLICY clients_read ON clients FOR SELECT USING (tradeops_can_see_desk(desk_id));
CREATE POLICY clients_write ON clients FOR INSERT WITH CHECK (tradeops_role() IN ('admin', 'system'));
CREATE POLICY clients_change ON clients FOR UPDATE
    USING (tradeops_role() IN ('admin', 'system')) WITH CHECK (tradeops_role() IN ('admin', 'system'));

CREATE POLICY instruments_read ON instruments FOR SELECT USING (tradeops_user_id() IS NOT NULL);
CREATE POLICY instruments_write ON instruments FOR INSERT
    WITH CHECK (tradeops_role() IN ('admin', 'system'));
CREATE POLICY instruments_change ON instruments FOR UPDATE
    USING (tradeops_role() IN ('admin', 'risk', 'system'));

CREATE POLICY orders_read ON orders FOR SELECT USING (tradeops_can_see_desk(desk_id));
CREATE POLICY orders_submit ON orders FOR INSERT WITH CHECK (
    tradeops_can_see_desk(desk_id) AND created_by = tradeops_user_id()
    AND tradeops_role() IN ('trader', 'agent', 'system'));
CREATE POLICY orders_change ON orders FOR UPDATE
    USING (tradeops_can_see_desk(desk_id)) WITH CHECK (tradeops_can_see_desk(desk_id));

CREATE POLICY order_events_read ON order_events FOR SELECT USING (tradeops_can_see_desk(desk_id));
CREATE POLICY order_events_append ON order_events FOR INSERT
    WITH CHECK (tradeops_can_see_desk(desk_id));

CREATE POLICY api_keys_read ON api_keys FOR SELECT
    USING (current_user <> 'tradeops_app' OR owner_user_id = tradeops_user_id()
           OR tradeops_role() IN ('admin', 'system'));
CREATE POLICY api_keys_create ON api_keys FOR INSERT
    WITH CHECK (owner_user_id = tradeops_user_id() OR tradeops_role() IN ('admin', 'system'));
CREATE POLICY api_keys_revoke ON api_keys FOR UPDATE
    USING (current_user <> 'tradeops_app' OR owner_user_id = tradeops_user_id()
           OR tradeops_role() IN ('admin', 'system'));
"""

DROP_POLICIES = """
DROP POLICY desks_read ON desks; DROP POLICY desks_write ON desks; DROP POLICY desks_change ON desks;
DROP POLICY users_read ON users; DROP POLICY users_write ON users; DROP POLICY users_change ON users;
DROP POLICY desk_members_read ON desk_members; DROP POLICY desk_members_write ON desk_members;
DROP POLICY desk_members_remove ON desk_members;
DROP POLICY clients_read ON clients; DROP POLICY clients_write ON clients;
DROP POLICY clients_change ON clients;
DROP POLICY instruments_read ON instruments; DROP POLICY instruments_write ON instruments;
DROP POLICY instruments_change ON instruments;
DROP POLICY orders_read ON orders; DROP POLICY orders_submit ON orders;
DROP POLICY orders_change ON orders;
DROP POLICY order_events_read ON order_events; DROP POLICY order_events_append ON order_events;
"""

# Secrets are never readable by the application role: password and key hashes are checked
# by the authentication step, which runs before the transaction switches to tradeops_app.
GRANTS = """
REVOKE SELECT ON users FROM tradeops_app;
GRANT SELECT (id, email, name, role, active, failed_logins, locked_until, created_at)
    ON users TO tradeops_app;
GRANT SELECT (id, owner_user_id, name, prefix, scopes, desk_ids, created_at, expires_at,
              revoked_at, last_used_at) ON api_keys TO tradeops_app;
GRANT INSERT ON api_keys TO tradeops_app;
GRANT UPDATE (revoked_at, last_used_at) ON api_keys TO tradeops_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO tradeops_app;
"""


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("owner_user_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("hash", sa.Text(), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("desk_ids", postgresql.ARRAY(sa.BigInteger()), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("hash ~ '^[0-9a-f]{64}$'", name=op.f("ck_api_keys_hash")),
        sa.CheckConstraint("prefix ~ '^[a-z0-9]{12}$'", name=op.f("ck_api_keys_prefix")),
        sa.CheckConstraint("cardinality(scopes) > 0", name=op.f("ck_api_keys_scopes_not_empty")),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 100", name=op.f("ck_api_keys_name")),
        sa.ForeignKeyConstraint(
            ["owner_user_id"],
            ["users.id"],
            name=op.f("fk_api_keys_owner_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    op.create_index(op.f("ix_api_keys_owner_user_id"), "api_keys", ["owner_user_id"], unique=False)
    op.add_column(
        "users", sa.Column("failed_logins", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column("users", sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True))
    op.create_check_constraint(op.f("ck_users_failed_logins"), "users", "failed_logins >= 0")
    op.execute(CONTEXT_FUNCTIONS)
    for table in RLS_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(POLICIES)
    op.execute(GRANTS)


def downgrade() -> None:
    for table in RLS_TABLES:
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.execute(DROP_POLICIES)
    op.execute("GRANT SELECT ON users TO tradeops_app")
    op.drop_constraint(op.f("ck_users_failed_logins"), "users")
    op.drop_column("users", "locked_until")
    op.drop_column("users", "failed_logins")
    op.drop_index(op.f("ix_api_keys_owner_user_id"), table_name="api_keys")
    op.drop_table("api_keys")
    op.execute(
        "DROP FUNCTION tradeops_can_see_desk(bigint), tradeops_desk_ids(), tradeops_all_desks(),"
        " tradeops_role(), tradeops_user_id()"
    )
