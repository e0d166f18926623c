"""order event stream: event ids, their transactions, and a notification at commit

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-27

GET /api/v1/orders/events/stream (Server-Sent Events) and the MCP tool
wait_for_order_update follow order_events as it grows. For that each event gets:

- `id`, an identity: the event's id in the stream, which a client sends back as
  Last-Event-ID to resume;
- `transaction_id`, the 64-bit id of the transaction that wrote it (pg_current_xact_id()).
  Ids are not handed out in commit order (a transaction may take id 7, and commit after
  another took and committed id 8), so a reader that resumed "after id 8" could miss 7.
  The stream reads events in (transaction_id, id) order and only those whose transaction
  is older than every transaction still in flight that may write here
  (order_events_horizon()): no event can ever appear before such a position any more, so
  resuming after it loses nothing and repeats nothing (orders/stream.py says more);
- a trigger that announces every event on the channel tradeops_order_events with its ids
  only ({"id", "order_id", "desk_id"}). NOTIFY is transactional: PostgreSQL delivers it at
  commit, and never for a transaction that rolled back, so nothing is announced that did
  not happen. It is on the table rather than in the code that writes events, so every
  writer (intake, decisions, fills, the risk job) announces alike. Listeners re-read the
  events through row-level security; the payload carries nothing a listener may not see.
  Its price: PostgreSQL serializes the commits of transactions that NOTIFY (docs/api.md
  has the measured cost). It sits beside the webhook outbox's AFTER INSERT trigger
  (order_events_webhooks, migration 0012): both fire for every event, in name order, and
  neither reads the other's columns (the outbox reads no `id` or `transaction_id`).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "tradeops_order_events"

NOTIFY = f"""
CREATE FUNCTION order_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', json_build_object(
        'id', NEW.id, 'order_id', NEW.order_id, 'desk_id', NEW.desk_id)::text);
    RETURN NULL;
END $$;
CREATE TRIGGER order_events_notify AFTER INSERT ON order_events
    FOR EACH ROW EXECUTE FUNCTION order_events_notify();
"""

# The stream's horizon: the oldest transaction in flight that may still write our tables.
# pg_snapshot_xmin alone is the oldest in the whole server, so one long transaction in
# another database would hold every event back. Transactions whose backend is in another
# database (read from pg_locks, where each transaction holds its own id, and from
# pg_stat_activity's database, both readable by every role) never write here, so they are
# left out. Run in the caller's statement (STABLE), on its snapshot; pg_locks is read a
# moment later, which can only leave out transactions of other databases: one of ours never
# shows another database, whether it is still running or not.
HORIZON = """
CREATE FUNCTION order_events_horizon() RETURNS bigint LANGUAGE sql STABLE AS $$
    WITH elsewhere AS (
        SELECT l.transactionid::text::bigint AS xid32
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
          AND a.datname IS DISTINCT FROM current_database())
    SELECT COALESCE(
        (SELECT min(x::text::bigint) FROM pg_snapshot_xip(snap.s) AS x
         WHERE x::text::bigint % 4294967296 NOT IN (SELECT xid32 FROM elsewhere)),
        pg_snapshot_xmax(snap.s)::text::bigint)
    FROM (SELECT pg_current_snapshot() AS s) AS snap
$$;
"""

NO_NOTIFY = """
DROP TRIGGER order_events_notify ON order_events;
DROP FUNCTION order_events_notify();
"""


def upgrade() -> None:
    op.add_column(
        "order_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
    )
    op.add_column(
        "order_events",
        sa.Column(
            "transaction_id",
            sa.BigInteger(),
            server_default=sa.text("(pg_current_xact_id()::text)::bigint"),
            nullable=False,
        ),
    )
    op.create_unique_constraint(op.f("uq_order_events_id"), "order_events", ["id"])
    op.create_index("ix_order_events_transaction_id_id", "order_events", ["transaction_id", "id"])
    op.execute(NOTIFY)
    op.execute(HORIZON)


def downgrade() -> None:
    op.execute("DROP FUNCTION order_events_horizon()")
    op.execute(NO_NOTIFY)
    op.drop_index("ix_order_events_transaction_id_id", table_name="order_events")
    op.drop_constraint(op.f("uq_order_events_id"), "order_events", type_="unique")
    op.drop_column("order_events", "transaction_id")
    op.drop_column("order_events", "id")
