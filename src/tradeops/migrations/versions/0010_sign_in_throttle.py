"""sign-in throttle per email

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27

Failed sign-ins were counted on the user's row, so only an email with an account could be
locked: after five failures a known email answered 429 and an unknown one never did, which
told anyone which emails have accounts. They are now counted per email, whether or not it
has an account, in sign_in_throttle, keyed by the SHA-256 of the lower-cased email (a fixed
size whatever is typed, and no attacker-chosen text stored). The users columns go.

Only the sign-in step (the login role, before any switch to tradeops_app) reads and writes
the table; the system's housekeeping (as tradeops_app) deletes rows whose last failure is
long past, so the table holds at most the emails tried in the last failure window.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICIES_AND_GRANTS = """
ALTER TABLE sign_in_throttle ENABLE ROW LEVEL SECURITY;
ALTER TABLE sign_in_throttle FORCE ROW LEVEL SECURITY;
CREATE POLICY sign_in_throttle_sign_in ON sign_in_throttle FOR ALL
    USING (current_user <> 'tradeops_app') WITH CHECK (current_user <> 'tradeops_app');
-- Housekeeping forgets old failures; a DELETE's WHERE needs the rows visible too.
CREATE POLICY sign_in_throttle_purge ON sign_in_throttle FOR ALL
    USING (tradeops_role() = 'system');
GRANT SELECT, DELETE ON sign_in_throttle TO tradeops_app;
"""


def upgrade() -> None:
    op.create_table(
        "sign_in_throttle",
        sa.Column("email_key", postgresql.BYTEA(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("failures > 0", name=op.f("ck_sign_in_throttle_failures")),
        sa.CheckConstraint(
            "length(email_key) = 32", name=op.f("ck_sign_in_throttle_email_key_sha256")
        ),
        sa.PrimaryKeyConstraint("email_key", name=op.f("pk_sign_in_throttle")),
    )
    op.create_index(
        op.f("ix_sign_in_throttle_last_failed_at"), "sign_in_throttle", ["last_failed_at"]
    )
    op.execute(POLICIES_AND_GRANTS)
    op.drop_constraint(op.f("ck_users_failed_logins"), "users")
    op.drop_column("users", "locked_until")
    op.drop_column("users", "failed_logins")


def downgrade() -> None:
    op.add_column(
        "users", sa.Column("failed_logins", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column("users", sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True))
    op.create_check_constraint(op.f("ck_users_failed_logins"), "users", "failed_logins >= 0")
    op.execute("GRANT SELECT (failed_logins, locked_until) ON users TO tradeops_app")
    op.drop_table("sign_in_throttle")
