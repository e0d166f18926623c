"""order list indexes

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27

At ten million orders the list's filters scanned: a symbol had only a plain instrument_id
index (no order by id), a created range none at all, and a status on a small desk walked
the whole (status, id) index past other desks' orders. Each filter of GET /orders now has an
index that gives its rows newest first (ORDER BY id DESC, keyset on id), with the equality
column first:

- (instrument_id, id), replacing (instrument_id): a symbol's orders newest first. It still
  serves the foreign key's lookups (instrument_id is its leading column).
- (desk_id, status, id) and (desk_id, risk_status, id): a status or risk status of one desk,
  newest first, however rare on that desk. (status, id) stays for principals of every desk.
- (created_at, id): a created range, listed newest first by (created_at, id) and read
  backwards from the range's end, however far back (by id, a day 600 days back walked 8.2 M
  rows). Ids follow created_at only roughly (created_at is the transaction's start, the id
  is drawn at insert), so a range cannot be turned into an id range exactly.
  See docs/benchmarks.md, "Ten million orders".

The client filter already had (client_id, id); the list now filters by the client's key
instead of joining on its external id, so it is used.

On a large live table build these first with CREATE INDEX CONCURRENTLY under the same names;
this migration then skips them (IF NOT EXISTS).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {
    "ix_orders_instrument_id_id": "(instrument_id, id)",
    "ix_orders_desk_id_status_id": "(desk_id, status, id)",
    "ix_orders_desk_id_risk_status_id": "(desk_id, risk_status, id)",
    "ix_orders_created_at_id": "(created_at, id)",
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON orders {columns}")
    op.execute("DROP INDEX IF EXISTS ix_orders_instrument_id")


def downgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS ix_orders_instrument_id ON orders (instrument_id)")
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
