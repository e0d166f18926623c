"""page session generation

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23

Signing out of the approver pages must end the session on the server, not only delete the
cookie in one browser: a copied cookie would otherwise stay valid until it expires. Each
user has a page session generation; a page session cookie carries the generation it was
issued in, and signing out moves the user to the next one, which ends every page session
the user had. A counter, not a timestamp, so the application's and the database's clocks
never have to agree.

The application role may not update users; end_page_sessions() (SECURITY DEFINER) moves
only the acting user's own generation.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

END_PAGE_SESSIONS = """
CREATE FUNCTION end_page_sessions() RETURNS integer
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS
$$ UPDATE users SET page_session_generation = page_session_generation + 1
   WHERE id = tradeops_user_id() RETURNING page_session_generation $$;
REVOKE ALL ON FUNCTION end_page_sessions() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION end_page_sessions() TO tradeops_app;
"""


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("page_session_generation", sa.Integer(), server_default="0", nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_users_page_session_generation"), "users", "page_session_generation >= 0"
    )
    op.execute(END_PAGE_SESSIONS)


def downgrade() -> None:
    op.execute("DROP FUNCTION end_page_sessions()")
    op.drop_constraint(op.f("ck_users_page_session_generation"), "users")
    op.drop_column("users", "page_session_generation")
