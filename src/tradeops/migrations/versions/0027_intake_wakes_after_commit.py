"""A new order's wake-ups are sent after its commit, not at it

Revision ID: 0027
Revises: 0026
Create Date: 2026-11-28

Two triggers wake listeners when a new order commits: the order event's NOTIFY for the
event streams (migration 0015) and procrastinate's for its workers (the risk job). But
PostgreSQL serializes the commits of transactions that NOTIFY: each takes one database-wide
lock before its commit record and holds it until the record is flushed, so concurrent
intakes, which would otherwise share a flush, commit one flush at a time. With two server
processes this was most of POST /orders' loss (docs/benchmarks.md: 616 orders/s with the
triggers, 879 without).

A notification is only a hint to look again (every listener also looks on a timer), so it
need not travel in the transaction. This migration:

- gates both triggers on the transaction-local setting `tradeops.wake_after_commit`: a
  transaction that sets it to 'on' promises to send its wake-ups once it has committed, and
  its triggers send none. Every other writer is unchanged: its transaction notifies at
  commit, as before;
- makes `tradeops_submit_order` (POST /orders in one statement, migration 0025) set it,
  for the order, its event and its risk job; the application then sends the same
  notifications (db/wakeups.py), in batches, with `tradeops_wake`;
- adds `tradeops_wake(channels, payloads)`: pg_notify for each pair, in a transaction of its
  own that writes nothing else and so need not wait for its commit record's flush
  (synchronous_commit off, for this transaction only): the lock is held for microseconds.

The function's new line is put in place in its installed definition (pg_get_functiondef),
after the line that sets its lock timeout; intake's statement itself is unchanged
(tests/integration/test_one_statement_intake.py compares it).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A transaction's promise to wake its listeners itself, once committed (db/wakeups.py).
NOT_WAKING_AFTER_COMMIT = (
    "current_setting('tradeops.wake_after_commit', true) IS DISTINCT FROM 'on'"
)

GATE_TRIGGERS = f"""
DROP TRIGGER order_events_notify ON order_events;
CREATE TRIGGER order_events_notify AFTER INSERT ON order_events
    FOR EACH ROW WHEN ({NOT_WAKING_AFTER_COMMIT})
    EXECUTE FUNCTION order_events_notify();
DROP TRIGGER procrastinate_jobs_notify_queue_job_inserted_v1 ON procrastinate_jobs;
CREATE TRIGGER procrastinate_jobs_notify_queue_job_inserted_v1 AFTER INSERT ON procrastinate_jobs
    FOR EACH ROW WHEN (new.status = 'todo' AND {NOT_WAKING_AFTER_COMMIT})
    EXECUTE FUNCTION procrastinate_notify_queue_job_inserted_v1();
"""

# As migrations 0015 and procrastinate's schema (0005) wrote them.
UNGATE_TRIGGERS = """
DROP TRIGGER order_events_notify ON order_events;
CREATE TRIGGER order_events_notify AFTER INSERT ON order_events
    FOR EACH ROW EXECUTE FUNCTION order_events_notify();
DROP TRIGGER procrastinate_jobs_notify_queue_job_inserted_v1 ON procrastinate_jobs;
CREATE TRIGGER procrastinate_jobs_notify_queue_job_inserted_v1 AFTER INSERT ON procrastinate_jobs
    FOR EACH ROW WHEN (new.status = 'todo'::procrastinate_job_status)
    EXECUTE FUNCTION procrastinate_notify_queue_job_inserted_v1();
"""

WAKE = """
CREATE FUNCTION tradeops_wake(in_channels text[], in_payloads text[]) RETURNS integer
LANGUAGE sql VOLATILE AS $$
    -- Nothing durable is written here (notifications never survive a restart): the commit
    -- need not wait for the flush, and releases the notification lock at once.
    SELECT set_config('synchronous_commit', 'off', true);
    SELECT count(pg_notify(c, p))::integer FROM unnest(in_channels, in_payloads) AS w(c, p);
$$;
"""

SUBMIT_ORDER = (
    "tradeops_submit_order(text, text, bigint, text, text, text, text[], text, integer, text,"
    " text, text, text, text, timestamptz, numeric, numeric, text, text, text, text, text, text)"
)
LOCK_TIMEOUT = "    PERFORM set_config('lock_timeout', in_lock_timeout_ms::text, true);\n"
WAKE_AFTER_COMMIT = (
    "    -- Its triggers send no wake-ups at commit: the application sends them after it\n"
    "    -- (migration 0027), sparing concurrent intakes the commit lock NOTIFY takes.\n"
    "    PERFORM set_config('tradeops.wake_after_commit', 'on', true);\n"
)


def _rewrite_submit_order(old: str, new: str) -> None:
    """Replace `old` by `new` in the installed tradeops_submit_order, once."""
    op.execute(f"""
DO $do$
DECLARE
    definition text := pg_get_functiondef('{SUBMIT_ORDER}'::regprocedure);
BEGIN
    IF position($old${old}$old$ IN definition) = 0 THEN
        RAISE EXCEPTION 'tradeops_submit_order is not as migration 0027 expects';
    END IF;
    EXECUTE replace(definition, $old${old}$old$, $new${new}$new$);
END $do$;
""")


def upgrade() -> None:
    op.execute(GATE_TRIGGERS)
    op.execute(WAKE)
    _rewrite_submit_order(LOCK_TIMEOUT, LOCK_TIMEOUT + WAKE_AFTER_COMMIT)


def downgrade() -> None:
    _rewrite_submit_order(LOCK_TIMEOUT + WAKE_AFTER_COMMIT, LOCK_TIMEOUT)
    op.execute("DROP FUNCTION tradeops_wake(text[], text[])")
    op.execute(UNGATE_TRIGGERS)
