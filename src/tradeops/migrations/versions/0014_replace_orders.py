"""replace (amend) an order

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27

An amendment is a new decision: the open order becomes REPLACED, and a new order, born
PENDING with its risk check PENDING like any intake, takes its place. The two name each other:
`replaces` on the new order, `replaced_by` on the old one. Both are composite foreign keys
(replaces, desk_id) → orders (id, desk_id), so a replacement never crosses desks, and unique,
so an order is replaced at most once and replaces at most one. A REPLACED order always names
its replacement (a check).

The trigger `orders_replacement` holds the rest for every writer:
- a replacement keeps the replaced order's client, instrument, side and maker (so maker-checker
  sees the same maker: an amendment never turns its author into a checker of their own order);
- only an open order (PENDING, REVIEWED, APPROVED, PARTIALLY_FILLED) becomes REPLACED, and
  the links, once set, never change.

The maker-checker trigger of 0011 lets the move to REPLACED through (it is not a decision),
and its birth trigger holds the new order to PENDING, undecided, risk PENDING.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = (
    "'PENDING', 'REVIEWED', 'APPROVED', 'PARTIALLY_FILLED', 'FILLED', 'REJECTED', 'CANCELLED'"
)

REPLACEMENT = """
CREATE FUNCTION orders_enforce_replacement() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    replaced orders%ROWTYPE;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT * INTO replaced FROM orders WHERE id = NEW.replaces;
        IF NOT FOUND OR replaced.client_id <> NEW.client_id
           OR replaced.instrument_id <> NEW.instrument_id OR replaced.side <> NEW.side
           OR replaced.created_by <> NEW.created_by THEN
            PERFORM orders_maker_checker_refuse(NEW.id,
                'a replacement keeps the client, instrument, side and maker of the order it replaces');
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.replaces IS DISTINCT FROM OLD.replaces
       OR (OLD.replaced_by IS NOT NULL AND NEW.replaced_by IS DISTINCT FROM OLD.replaced_by) THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'the links of a replacement never change');
    END IF;
    IF NEW.status = 'REPLACED' AND OLD.status IS DISTINCT FROM 'REPLACED'
       AND OLD.status NOT IN ('PENDING', 'REVIEWED', 'APPROVED', 'PARTIALLY_FILLED') THEN
        PERFORM orders_maker_checker_refuse(NEW.id,
            format('it is %s; only an open order can be replaced', OLD.status));
    END IF;
    IF OLD.status = 'REPLACED' AND NEW.status IS DISTINCT FROM 'REPLACED' THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'a REPLACED order is final');
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER orders_replacement_birth BEFORE INSERT ON orders FOR EACH ROW
    WHEN (NEW.replaces IS NOT NULL)
    EXECUTE FUNCTION orders_enforce_replacement();
CREATE TRIGGER orders_replacement BEFORE UPDATE ON orders FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status AND 'REPLACED' IN (OLD.status, NEW.status)
          OR OLD.replaces IS DISTINCT FROM NEW.replaces
          OR OLD.replaced_by IS DISTINCT FROM NEW.replaced_by)
    EXECUTE FUNCTION orders_enforce_replacement();
"""

DROP_REPLACEMENT = """
DROP TRIGGER orders_replacement ON orders;
DROP TRIGGER orders_replacement_birth ON orders;
DROP FUNCTION orders_enforce_replacement();
"""


def _status_check(statuses: str) -> None:
    op.drop_constraint(op.f("ck_orders_status"), "orders")
    op.create_check_constraint(op.f("ck_orders_status"), "orders", f"status IN ({statuses})")


def upgrade() -> None:
    _status_check(STATUSES + ", 'REPLACED'")
    op.add_column("orders", sa.Column("replaces", sa.BigInteger(), nullable=True))
    op.add_column("orders", sa.Column("replaced_by", sa.BigInteger(), nullable=True))
    for column in ("replaces", "replaced_by"):
        op.create_foreign_key(
            op.f(f"fk_orders_{column}_orders"),
            "orders",
            "orders",
            [column, "desk_id"],
            ["id", "desk_id"],
        )
        op.create_unique_constraint(op.f(f"uq_orders_{column}"), "orders", [column])
    op.create_check_constraint(
        op.f("ck_orders_replaced_names_replacement"),
        "orders",
        "(status = 'REPLACED') = (replaced_by IS NOT NULL)",
    )
    op.execute(REPLACEMENT)
    # GET /orders?client_order_id= and an approver's look-up: newest first under one id.
    op.create_index(
        "ix_orders_client_order_id_id",
        "orders",
        ["client_order_id", "id"],
        postgresql_where=sa.text("client_order_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_orders_client_order_id_id", "orders")
    op.execute(DROP_REPLACEMENT)
    op.drop_constraint(op.f("ck_orders_replaced_names_replacement"), "orders")
    for column in ("replaced_by", "replaces"):
        op.drop_constraint(op.f(f"uq_orders_{column}"), "orders")
        op.drop_constraint(op.f(f"fk_orders_{column}_orders"), "orders")
        op.drop_column("orders", column)
    op.execute("UPDATE orders SET status = 'CANCELLED' WHERE status = 'REPLACED'")
    _status_check(STATUSES)
