"""background jobs (procrastinate)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24

procrastinate's own schema, read from the installed package so the SQL always matches the
library the worker runs. The application role may only defer jobs (call
procrastinate_defer_jobs_v1, which inserts a job and its "deferred" event); it reads nothing
but the new job's id. The worker connects as the database owner. procrastinate's tables are
its own: they are not in our models (env_options.include_object) and carry no row-level
security (no desk data in them, only task names and ids).
"""

from collections.abc import Sequence

from alembic import op
from procrastinate.schema import SchemaManager

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GRANTS = """
GRANT INSERT, SELECT (id) ON procrastinate_jobs TO tradeops_app;
GRANT INSERT ON procrastinate_events TO tradeops_app;
GRANT USAGE ON SEQUENCE procrastinate_jobs_id_seq, procrastinate_events_id_seq TO tradeops_app;
GRANT EXECUTE ON FUNCTION procrastinate_defer_jobs_v1(procrastinate_job_to_defer_v1[])
    TO tradeops_app;
"""

DROP_ALL = r"""
DROP TABLE procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs,
    procrastinate_workers CASCADE;
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'procrastinate\_%'
    LOOP
        EXECUTE 'DROP FUNCTION ' || fn;
    END LOOP;
END $$;
DROP TYPE procrastinate_job_to_defer_v1, procrastinate_job_event_type, procrastinate_job_status;
"""


def upgrade() -> None:
    # Run as the driver sees it (no bind parameters in it), with psycopg's % escaped.
    op.get_bind().exec_driver_sql(SchemaManager.get_schema().replace("%", "%%"))
    op.execute(GRANTS)


def downgrade() -> None:
    op.execute(DROP_ALL)
