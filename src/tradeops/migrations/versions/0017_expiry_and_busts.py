"""expiry and busts

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-27

Expiry (issue 16, item 4). Desks get their end of day: `time_zone` (an IANA name, checked by
the CHECK below, which converts a time in it: an unknown zone is an error) and `day_cutoff`;
existing desks get UTC 23:59 until someone sets theirs. Orders get `expire_at`: a GTD order
names it, a DAY order gets the desk's next cut-off after it is submitted (a trigger computes
it, so every writer gets the same), GTC/IOC/FOK have none. Orders submitted before this
migration keep their time in force and have no `expire_at`: nothing expires on upgrade.
EXPIRED is a status; the expiry sweep finds due orders through a partial index on expire_at
of the open statuses, and a trigger lets an order expire only from an open status, only once
its time has passed, and only by the system, and never moves it on from EXPIRED (no approval,
no fill); a bust may still take back a fill of an expired order.

Busts (item 5). An execution is a FILL or a BUST; a bust names the fill it reverses
(`reverses_execution_id`, unique: a fill is busted at most once; the trigger refuses busting
a bust or a fill of another order, and any quantity or price but the fill's), with a reason.
Executions are still never updated or deleted (the application role may only insert). A
bust takes an order back from FILLED or PARTIALLY_FILLED to APPROVED (nothing left filled):
maker-checker's trigger no longer takes that for an approval, and a new CHECK says an
APPROVED order has nothing filled.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "('PENDING', 'REVIEWED', 'APPROVED', 'PARTIALLY_FILLED')"
# ck_orders_status as 0014 left it (with REPLACED); EXPIRED is added after it.
OLD_STATUSES = (
    "'PENDING', 'REVIEWED', 'APPROVED', 'PARTIALLY_FILLED', 'FILLED', 'REJECTED', 'CANCELLED',"
    " 'REPLACED'"
)
OLD_TIMES_IN_FORCE = "'DAY', 'GTC', 'IOC', 'FOK'"

EXPIRY = f"""
-- The first cut-off (local `cutoff` in `zone`) after `after`: today's if it is still to
-- come there, tomorrow's otherwise. Calendar days (no holiday calendar); a local time that a
-- daylight-saving change skips is read as PostgreSQL reads it.
CREATE FUNCTION tradeops_day_end(zone text, cutoff time, after timestamptz)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT (CASE WHEN (after AT TIME ZONE zone) < date_trunc('day', after AT TIME ZONE zone) + cutoff
                 THEN date_trunc('day', after AT TIME ZONE zone) + cutoff
                 ELSE date_trunc('day', after AT TIME ZONE zone) + cutoff + interval '1 day'
            END) AT TIME ZONE zone
$$;

CREATE FUNCTION orders_enforce_time_in_force() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d desks%ROWTYPE;
BEGIN
    IF NEW.time_in_force = 'DAY' AND NEW.expire_at IS NULL THEN
        SELECT * INTO d FROM desks WHERE id = NEW.desk_id;
        IF NOT FOUND THEN
            PERFORM orders_maker_checker_refuse(NEW.id, 'a DAY order needs its desk''s cut-off');
        END IF;
        NEW.expire_at := tradeops_day_end(d.time_zone, d.day_cutoff, now());
    END IF;
    IF NEW.time_in_force = 'GTD' AND NEW.expire_at <= now() THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'a GTD order expires in the future');
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER orders_time_in_force BEFORE INSERT ON orders FOR EACH ROW
    WHEN (NEW.time_in_force IN ('DAY', 'GTD'))
    EXECUTE FUNCTION orders_enforce_time_in_force();

-- Silence is not consent: an order expires only from an open status, once its time has
-- passed, by the system; an expired order stays expired and takes no fill.
CREATE FUNCTION orders_enforce_expiry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'EXPIRED' AND NEW.status <> 'EXPIRED' THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'an expired order stays expired');
    END IF;
    IF OLD.status = 'EXPIRED' AND NEW.filled_quantity > OLD.filled_quantity THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'an expired order takes no fill');
    END IF;
    IF NEW.status = 'EXPIRED' AND OLD.status <> 'EXPIRED' THEN
        IF OLD.status NOT IN {OPEN} THEN
            PERFORM orders_maker_checker_refuse(NEW.id,
                format('it is %s; only an open order expires', OLD.status));
        END IF;
        IF NEW.expire_at IS NULL OR NEW.expire_at > now() THEN
            PERFORM orders_maker_checker_refuse(NEW.id, 'its time has not passed');
        END IF;
        IF tradeops_user_id() IS NOT NULL AND tradeops_role() IS DISTINCT FROM 'system' THEN
            PERFORM orders_maker_checker_refuse(NEW.id, 'only the expiry job expires an order');
        END IF;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER orders_expiry BEFORE UPDATE ON orders FOR EACH ROW
    WHEN (OLD.status = 'EXPIRED' OR NEW.status = 'EXPIRED')
    EXECUTE FUNCTION orders_enforce_expiry();
"""  # noqa: S608 - SQL from constants only

DROP_EXPIRY = """
DROP TRIGGER orders_expiry ON orders;
DROP TRIGGER orders_time_in_force ON orders;
DROP FUNCTION orders_enforce_expiry(), orders_enforce_time_in_force(),
    tradeops_day_end(text, time, timestamptz);
"""

# The maker-checker function as it stands before this migration (0016's: 0011's with the
# approvals an order needs fixed at intake and counted at approval), written out whole, with
# one change: a move back to APPROVED from a filled status (a bust took every fill back) is
# not an approval (no approvals counted again); approved_by cannot change on it all the same.
# The downgrade writes it back with the line as it was, i.e. 0016's function.
APPROVING_BEFORE = (
    "approving boolean := NEW.status = 'APPROVED' AND OLD.status IS DISTINCT FROM 'APPROVED';"
)
APPROVING = (
    "approving boolean := NEW.status = 'APPROVED'"
    " AND OLD.status NOT IN ('APPROVED', 'PARTIALLY_FILLED', 'FILLED');"
)
MAKER_CHECKER_FUNCTION = """
CREATE OR REPLACE FUNCTION orders_enforce_maker_checker() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    {approving}
    rejecting boolean := NEW.status = 'REJECTED' AND OLD.status IS DISTINCT FROM 'REJECTED';
    decider bigint := CASE WHEN approving THEN NEW.approved_by ELSE NEW.rejected_by END;
    given integer;
BEGIN
    IF NEW.created_by IS DISTINCT FROM OLD.created_by
       OR NEW.created_by_key_id IS DISTINCT FROM OLD.created_by_key_id THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'the maker of an order never changes');
    END IF;

    IF NEW.approvals_required IS DISTINCT FROM OLD.approvals_required THEN
        PERFORM orders_maker_checker_refuse(NEW.id,
            'the approvals an order needs are fixed when it is submitted');
    END IF;
    IF NEW.approved_by IS DISTINCT FROM OLD.approved_by AND NOT approving THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'approved_by is set by the approval only');
    END IF;
    IF NEW.rejected_by IS DISTINCT FROM OLD.rejected_by AND NOT rejecting THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'rejected_by is set by the rejection only');
    END IF;
    IF NEW.risk_status IS DISTINCT FROM OLD.risk_status
       AND tradeops_user_id() IS NOT NULL AND tradeops_role() IS DISTINCT FROM 'system' THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'only the risk check sets the risk status');
    END IF;
    IF NOT (approving OR rejecting) THEN
        RETURN NEW;  -- reviews, fills, cancellations
    END IF;
    IF approving AND OLD.status IS DISTINCT FROM 'REVIEWED' THEN
        PERFORM orders_maker_checker_refuse(NEW.id,
            format('it is %s; only a REVIEWED order can be approved', OLD.status));
    END IF;
    IF approving AND NEW.risk_status IS DISTINCT FROM 'PASSED' THEN
        PERFORM orders_maker_checker_refuse(NEW.id,
            format('its risk check is %s, not PASSED', NEW.risk_status));
    END IF;
    -- The maker's key owner is the maker (fk_orders_created_by_key_id_api_keys).
    IF decider IS NULL OR decider = NEW.created_by THEN
        PERFORM orders_maker_checker_refuse(NEW.id,
            'a decision names its decider, who is not the order''s maker');
    END IF;

    IF approving THEN
        -- Distinct people by order_approvals' primary key; the last of them is approved_by.
        SELECT count(*) INTO given FROM order_approvals WHERE order_id = NEW.id;
        IF given < NEW.approvals_required
           OR NOT EXISTS (SELECT 1 FROM order_approvals
                          WHERE order_id = NEW.id AND approved_by = decider) THEN
            PERFORM orders_maker_checker_refuse(NEW.id, format(
                'it has %s of the %s approvals it needs', given, NEW.approvals_required));
        END IF;
    END IF;
    -- With a request context (every application write) the decider is the acting person:
    -- an approver, not through an API key. Without one (the owner) the row rules suffice.
    IF tradeops_user_id() IS NOT NULL
       AND (decider <> tradeops_user_id() OR tradeops_role() IS DISTINCT FROM 'approver'
            OR tradeops_api_key_id() IS NOT NULL) THEN
        PERFORM orders_maker_checker_refuse(NEW.id,
            'a decision is the acting approver''s own, never through an API key');
    END IF;
    RETURN NEW;
END $$;
"""

EXECUTION_RULES = r"""
CREATE OR REPLACE FUNCTION executions_enforce_order_rules() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    o orders%ROWTYPE;
    busted executions%ROWTYPE;
    lot numeric;
BEGIN
    SELECT * INTO o FROM orders WHERE id = NEW.order_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown order' USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF NEW.kind = 'BUST' THEN
        SELECT * INTO busted FROM executions WHERE id = NEW.reverses_execution_id;
        IF NOT FOUND OR busted.kind <> 'FILL' OR busted.order_id <> NEW.order_id
           OR busted.quantity <> NEW.quantity OR busted.price <> NEW.price THEN
            RAISE EXCEPTION 'a bust reverses one fill of its order, at its quantity and price'
                USING ERRCODE = 'check_violation', CONSTRAINT = 'executions_bust';
        END IF;
        RETURN NEW;
    END IF;
    IF o.status NOT IN ('APPROVED', 'PARTIALLY_FILLED') THEN
        RAISE EXCEPTION 'order % is %, not fillable', o.id, o.status
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT lot_size INTO lot FROM instruments WHERE id = o.instrument_id;
    IF mod(NEW.quantity, lot) <> 0 THEN
        RAISE EXCEPTION 'fill quantity is not a multiple of the lot size'
            USING ERRCODE = 'check_violation';
    END IF;
    IF o.order_type = 'LIMIT' AND (
        (o.side = 'BUY' AND NEW.price > o.price) OR (o.side = 'SELL' AND NEW.price < o.price)
    ) THEN
        RAISE EXCEPTION 'fill price is through the limit price' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
"""

OLD_EXECUTION_RULES = r"""
CREATE OR REPLACE FUNCTION executions_enforce_order_rules() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    o orders%ROWTYPE;
    lot numeric;
BEGIN
    SELECT * INTO o FROM orders WHERE id = NEW.order_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown order' USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF o.status NOT IN ('APPROVED', 'PARTIALLY_FILLED') THEN
        RAISE EXCEPTION 'order % is %, not fillable', o.id, o.status
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT lot_size INTO lot FROM instruments WHERE id = o.instrument_id;
    IF mod(NEW.quantity, lot) <> 0 THEN
        RAISE EXCEPTION 'fill quantity is not a multiple of the lot size'
            USING ERRCODE = 'check_violation';
    END IF;
    IF o.order_type = 'LIMIT' AND (
        (o.side = 'BUY' AND NEW.price > o.price) OR (o.side = 'SELL' AND NEW.price < o.price)
    ) THEN
        RAISE EXCEPTION 'fill price is through the limit price' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
"""

ORDER_CHECKS = {
    "gtd_has_expire_at": "time_in_force <> 'GTD' OR expire_at IS NOT NULL",
    "expire_at_only_day_or_gtd": "time_in_force IN ('DAY', 'GTD') OR expire_at IS NULL",
    "approved_unfilled": "status <> 'APPROVED' OR filled_quantity = 0",
}
EXECUTION_CHECKS = {
    "kind": "kind IN ('FILL', 'BUST')",
    "bust_reverses_a_fill": "(kind = 'BUST') = (reverses_execution_id IS NOT NULL)",
    "bust_has_reason": "(kind = 'BUST') = (reason IS NOT NULL)",
    "reason": "reason IS NULL OR length(reason) BETWEEN 1 AND 4000",
}


def upgrade() -> None:
    op.add_column("desks", sa.Column("time_zone", sa.Text(), server_default="UTC", nullable=False))
    op.add_column(
        "desks", sa.Column("day_cutoff", sa.Time(), server_default="23:59", nullable=False)
    )
    op.create_check_constraint(
        op.f("ck_desks_time_zone"),
        "desks",
        "time_zone ~ '^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$'"
        " AND (timestamptz '2000-01-01 00:00Z' AT TIME ZONE time_zone) IS NOT NULL",
    )
    op.add_column("orders", sa.Column("expire_at", sa.DateTime(timezone=True), nullable=True))
    op.drop_constraint(op.f("ck_orders_status"), "orders")
    op.create_check_constraint(
        op.f("ck_orders_status"), "orders", f"status IN ({OLD_STATUSES}, 'EXPIRED')"
    )
    op.drop_constraint(op.f("ck_orders_time_in_force"), "orders")
    op.create_check_constraint(
        op.f("ck_orders_time_in_force"), "orders", f"time_in_force IN ({OLD_TIMES_IN_FORCE}, 'GTD')"
    )
    for name, condition in ORDER_CHECKS.items():
        op.create_check_constraint(op.f(f"ck_orders_{name}"), "orders", condition)
    # The sweep's one query: due orders of the open statuses, soonest first.
    op.create_index(
        "ix_orders_expire_at_open",
        "orders",
        ["expire_at"],
        postgresql_where=sa.text(f"status IN {OPEN} AND expire_at IS NOT NULL"),
    )
    op.execute(EXPIRY)
    op.execute(MAKER_CHECKER_FUNCTION.format(approving=APPROVING))

    op.add_column("executions", sa.Column("kind", sa.Text(), server_default="FILL", nullable=False))
    op.add_column("executions", sa.Column("reverses_execution_id", sa.BigInteger()))
    op.add_column("executions", sa.Column("reason", sa.Text()))
    op.create_foreign_key(
        op.f("fk_executions_reverses_execution_id_executions"),
        "executions",
        "executions",
        ["reverses_execution_id"],
        ["id"],
    )
    op.create_unique_constraint(
        op.f("uq_executions_reverses_execution_id"), "executions", ["reverses_execution_id"]
    )
    for name, condition in EXECUTION_CHECKS.items():
        op.create_check_constraint(op.f(f"ck_executions_{name}"), "executions", condition)
    op.execute(EXECUTION_RULES)


def downgrade() -> None:
    op.execute(OLD_EXECUTION_RULES)
    for name in EXECUTION_CHECKS:
        op.drop_constraint(op.f(f"ck_executions_{name}"), "executions")
    op.drop_constraint(op.f("uq_executions_reverses_execution_id"), "executions")
    op.drop_constraint(op.f("fk_executions_reverses_execution_id_executions"), "executions")
    for column in ("reason", "reverses_execution_id", "kind"):
        op.drop_column("executions", column)
    op.execute(MAKER_CHECKER_FUNCTION.format(approving=APPROVING_BEFORE))
    op.execute(DROP_EXPIRY)
    # What expired was open until then; the status list before this migration has no word
    # for it but final ones, so expired orders are cancelled (as 0014's downgrade does).
    op.execute("UPDATE orders SET status = 'CANCELLED' WHERE status = 'EXPIRED'")
    op.drop_index("ix_orders_expire_at_open", table_name="orders")
    for name in ORDER_CHECKS:
        op.drop_constraint(op.f(f"ck_orders_{name}"), "orders")
    op.drop_constraint(op.f("ck_orders_time_in_force"), "orders")
    op.create_check_constraint(
        op.f("ck_orders_time_in_force"), "orders", f"time_in_force IN ({OLD_TIMES_IN_FORCE})"
    )
    op.drop_constraint(op.f("ck_orders_status"), "orders")
    op.create_check_constraint(op.f("ck_orders_status"), "orders", f"status IN ({OLD_STATUSES})")
    op.drop_column("orders", "expire_at")
    op.drop_constraint(op.f("ck_desks_time_zone"), "desks")
    op.drop_column("desks", "day_cutoff")
    op.drop_column("desks", "time_zone")
