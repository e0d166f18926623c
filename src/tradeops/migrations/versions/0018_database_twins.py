"""database twins

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-27

Rules the services enforce that a direct writer as the application role (in a request
context, row-level security on) could otherwise bypass:

- An order's approvals_required is the desk's band for its notional, whatever the writer
  sends: a BEFORE INSERT trigger computes it with the same expression as intake (orders/
  repository.py approvals_required), reading the same rows under the same row-level security.
- An order's expiry (expire_at, time_in_force) is fixed at intake: no request changes it
  (a maker could otherwise make a DAY order never expire, or make another's due now). An
  amendment is a new order with its own. Only the owner, outside any request, may.
- An order is REPLACED only by its own replacement (an order whose `replaces` names it, of the
  same maker), and only by its maker or the system: 0014 checked only the desk. Checked at the
  end of the statement, which inserts the replacement in a sibling CTE that a BEFORE
  trigger would not see.
- An order's filled_quantity is what its fills not busted add up to, whenever a request
  changes it or moves the order back from a filled status (since 0017 FILLED -> APPROVED is
  a bust, not an approval: without this a maker could reopen a filled order). Checked at the
  end of the statement, which records the fill or bust in a sibling CTE.
- An order's history event is written by a request only with the order's change: its seq
  is the order's version at the end of the statement (every writer's event is seq = the new
  version, orders.repository.order_change and the replacement's CREATED), so a desk user can
  no longer append an APPROVED event (and its signed webhook, its stream announcement) to a
  PENDING order. The order's history keeps one event per version (the key order_id, seq).
- A desk's approval policy and bands are written only by a person (no key) of a role that
  may, for a desk they see (0016's policies checked the role only).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The same SQL as orders.repository.approvals_required, for the order's own columns
# (arguments named apart from every column: a column would win over a same-named one).
APPROVALS_REQUIRED = """
CREATE FUNCTION tradeops_approvals_required(
    order_desk bigint, order_instrument bigint, order_quantity numeric, order_price numeric
) RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT COALESCE(CASE WHEN p.currency = i.currency
                          AND COALESCE(order_price, last.price) IS NOT NULL
        THEN (SELECT b.approvals FROM approval_bands b WHERE b.desk_id = order_desk
              AND b.min_notional <= order_quantity * COALESCE(order_price, last.price)
              ORDER BY b.min_notional DESC LIMIT 1)
        ELSE (SELECT max(b.approvals) FROM approval_bands b WHERE b.desk_id = order_desk)
        END, 1)
    FROM instruments i
    LEFT JOIN desk_approval_policies p ON p.desk_id = order_desk
    LEFT JOIN LATERAL (SELECT m.price FROM market_snapshots m WHERE m.instrument_id = i.id
                       ORDER BY m.as_of DESC LIMIT 1) last ON true
    WHERE i.id = order_instrument
$$;

CREATE FUNCTION orders_set_approvals_required() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.approvals_required := COALESCE(tradeops_approvals_required(
        NEW.desk_id, NEW.instrument_id, NEW.quantity, NEW.price), 1);
    RETURN NEW;
END $$;

CREATE TRIGGER orders_approvals_required BEFORE INSERT ON orders FOR EACH ROW
    EXECUTE FUNCTION orders_set_approvals_required();
"""

DROP_APPROVALS_REQUIRED = """
DROP TRIGGER orders_approvals_required ON orders;
DROP FUNCTION orders_set_approvals_required(), tradeops_approvals_required(bigint, bigint, numeric, numeric);
"""

EXPIRY_FIXED = """
CREATE FUNCTION orders_keep_expiry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF tradeops_user_id() IS NOT NULL THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'an order''s expiry is fixed at intake');
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER orders_expiry_fixed BEFORE UPDATE ON orders FOR EACH ROW
    WHEN (OLD.expire_at IS DISTINCT FROM NEW.expire_at
          OR OLD.time_in_force IS DISTINCT FROM NEW.time_in_force)
    EXECUTE FUNCTION orders_keep_expiry();
"""

DROP_EXPIRY_FIXED = """
DROP TRIGGER orders_expiry_fixed ON orders;
DROP FUNCTION orders_keep_expiry();
"""

REPLACED_BY_OWN = """
CREATE FUNCTION orders_enforce_own_replacement() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    replacement orders%ROWTYPE;
BEGIN
    SELECT * INTO replacement FROM orders WHERE id = NEW.replaced_by;
    IF NOT FOUND OR replacement.replaces IS DISTINCT FROM NEW.id
       OR replacement.created_by IS DISTINCT FROM OLD.created_by THEN
        PERFORM orders_maker_checker_refuse(NEW.id,
            'an order is replaced only by its own replacement');
    END IF;
    IF tradeops_user_id() IS NOT NULL AND tradeops_role() IS DISTINCT FROM 'system'
       AND tradeops_user_id() IS DISTINCT FROM OLD.created_by THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'only its maker replaces an order');
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER orders_replaced_by_own AFTER UPDATE ON orders
    DEFERRABLE INITIALLY IMMEDIATE FOR EACH ROW
    WHEN (NEW.status = 'REPLACED' AND OLD.status IS DISTINCT FROM 'REPLACED')
    EXECUTE FUNCTION orders_enforce_own_replacement();
"""

DROP_REPLACED_BY_OWN = """
DROP TRIGGER orders_replaced_by_own ON orders;
DROP FUNCTION orders_enforce_own_replacement();
"""

FILLED_BY_FILLS = """
CREATE FUNCTION orders_enforce_filled_by_fills() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    filled numeric;
BEGIN
    IF tradeops_user_id() IS NULL THEN
        RETURN NULL;  -- the owner outside a request: migrations, repairs
    END IF;
    SELECT COALESCE(sum(CASE WHEN e.kind = 'BUST' THEN -e.quantity ELSE e.quantity END), 0)
      INTO filled FROM executions e WHERE e.order_id = NEW.id;
    IF NEW.filled_quantity <> filled THEN
        PERFORM orders_maker_checker_refuse(NEW.id, format(
            'filled_quantity %s is not its fills not busted, %s', NEW.filled_quantity, filled));
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER orders_filled_by_fills AFTER UPDATE ON orders
    DEFERRABLE INITIALLY IMMEDIATE FOR EACH ROW
    WHEN (OLD.filled_quantity IS DISTINCT FROM NEW.filled_quantity
          OR OLD.status IN ('FILLED', 'PARTIALLY_FILLED')
             AND NEW.status IN ('APPROVED', 'PARTIALLY_FILLED')
             AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION orders_enforce_filled_by_fills();
"""

DROP_FILLED_BY_FILLS = """
DROP TRIGGER orders_filled_by_fills ON orders;
DROP FUNCTION orders_enforce_filled_by_fills();
"""

EVENT_WITH_CHANGE = """
CREATE FUNCTION order_events_enforce_with_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF tradeops_user_id() IS NOT NULL
       AND NEW.seq IS DISTINCT FROM (SELECT version FROM orders WHERE id = NEW.order_id) THEN
        PERFORM orders_maker_checker_refuse(NEW.order_id,
            'an order''s event is written only with its change');
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER order_events_with_change AFTER INSERT ON order_events
    DEFERRABLE INITIALLY IMMEDIATE FOR EACH ROW
    EXECUTE FUNCTION order_events_enforce_with_change();
"""

DROP_EVENT_WITH_CHANGE = """
DROP TRIGGER order_events_with_change ON order_events;
DROP FUNCTION order_events_enforce_with_change();
"""

# 0016's write policies, and the same with desk visibility and no key acting.
POLICY_WRITERS = "tradeops_role() IN ('risk', 'admin', 'system')"
POLICY_WRITERS_OF_DESK = (
    POLICY_WRITERS + " AND tradeops_can_see_desk(desk_id) AND tradeops_api_key_id() IS NULL"
)
WRITE_POLICIES = {
    "desk_approval_policies_set": ("desk_approval_policies", "INSERT", "WITH CHECK"),
    "desk_approval_policies_change": ("desk_approval_policies", "UPDATE", "USING"),
    "approval_bands_set": ("approval_bands", "INSERT", "WITH CHECK"),
    "approval_bands_remove": ("approval_bands", "DELETE", "USING"),
}


def _write_policies(condition: str) -> None:
    for name, (table, command, clause) in WRITE_POLICIES.items():
        op.execute(f"DROP POLICY {name} ON {table}")
        op.execute(f"CREATE POLICY {name} ON {table} FOR {command} {clause} ({condition})")


def upgrade() -> None:
    op.execute(APPROVALS_REQUIRED)
    op.execute(EXPIRY_FIXED)
    _write_policies(POLICY_WRITERS_OF_DESK)
    op.execute(REPLACED_BY_OWN)
    op.execute(FILLED_BY_FILLS)
    op.execute(EVENT_WITH_CHANGE)


def downgrade() -> None:
    op.execute(DROP_EVENT_WITH_CHANGE)
    op.execute(DROP_FILLED_BY_FILLS)
    op.execute(DROP_REPLACED_BY_OWN)
    _write_policies(POLICY_WRITERS)
    op.execute(DROP_EXPIRY_FIXED)
    op.execute(DROP_APPROVALS_REQUIRED)
