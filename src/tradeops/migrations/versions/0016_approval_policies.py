"""approval policies per desk

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-27

A desk's approval policy: bands by order notional (in the policy's currency) saying how many
approvals, from distinct people, an order needs. The policy in force at intake is stored on
the order (approvals_required), so changing a policy never changes what a submitted order
needs. Each approval is a row of order_approvals; its primary key (order_id, approved_by)
makes "distinct people" a constraint. The maker-checker trigger of 0011 is extended: an
order reaches APPROVED only when it has at least approvals_required approvals, the last one
being its approved_by. An approval row is refused (orders_maker_checker, so 409) unless the
order is REVIEWED with its risk check PASSED and the approver is not its maker (the maker's
key owner is the maker, 0011) and, with a request context, is the acting approver in person.
0014 (replace_orders) left that function alone (the move to REPLACED is no decision and
passes through; a REPLACED order is final by 0014's own trigger), so the downgrade restores
0011's. An amendment's new order gets approvals_required from the band, as intake does.

A policy's bands: the first starts at 0 (a deferred constraint trigger checks it at commit,
so a policy can be replaced band by band in one transaction), approvals 1 to 5.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICIES_AND_GRANTS = """
CREATE POLICY desk_approval_policies_read ON desk_approval_policies FOR SELECT
    USING (tradeops_can_see_desk(desk_id));
CREATE POLICY desk_approval_policies_set ON desk_approval_policies FOR INSERT
    WITH CHECK (tradeops_role() IN ('risk', 'admin', 'system'));
CREATE POLICY desk_approval_policies_change ON desk_approval_policies FOR UPDATE
    USING (tradeops_role() IN ('risk', 'admin', 'system'));
GRANT SELECT, INSERT, UPDATE ON desk_approval_policies TO tradeops_app;

CREATE POLICY approval_bands_read ON approval_bands FOR SELECT
    USING (tradeops_can_see_desk(desk_id));
CREATE POLICY approval_bands_set ON approval_bands FOR INSERT
    WITH CHECK (tradeops_role() IN ('risk', 'admin', 'system'));
CREATE POLICY approval_bands_remove ON approval_bands FOR DELETE
    USING (tradeops_role() IN ('risk', 'admin', 'system'));
GRANT SELECT, INSERT, DELETE ON approval_bands TO tradeops_app;

CREATE POLICY order_approvals_read ON order_approvals FOR SELECT
    USING (tradeops_can_see_desk(desk_id));
CREATE POLICY order_approvals_give ON order_approvals FOR INSERT
    WITH CHECK (tradeops_can_see_desk(desk_id) AND approved_by = tradeops_user_id());
GRANT SELECT, INSERT ON order_approvals TO tradeops_app;
"""

for_each_table = ("desk_approval_policies", "approval_bands", "order_approvals")

# Approvals recorded before this migration: the approved_by of each approved order, with the
# note and time of its APPROVED event (before the trigger below exists: those orders are past
# REVIEWED).
BACKFILL_APPROVALS = """
INSERT INTO order_approvals (order_id, desk_id, approved_by, approved_at, note)
SELECT o.id, o.desk_id, o.approved_by, COALESCE(e.at, o.updated_at), e.payload->>'note'
FROM orders o
LEFT JOIN LATERAL (SELECT at, payload FROM order_events
                   WHERE order_id = o.id AND type = 'APPROVED' ORDER BY seq DESC LIMIT 1) e ON true
WHERE o.approved_by IS NOT NULL;
"""

BANDS_START_AT_ZERO = """
CREATE FUNCTION approval_bands_start_at_zero() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    desk bigint := COALESCE(NEW.desk_id, OLD.desk_id);
BEGIN
    IF EXISTS (SELECT 1 FROM desk_approval_policies WHERE desk_id = desk)
       AND NOT EXISTS (SELECT 1 FROM approval_bands WHERE desk_id = desk AND min_notional = 0)
    THEN
        RAISE EXCEPTION 'approval policy of desk %: the first band starts at 0', desk
            USING ERRCODE = 'check_violation', CONSTRAINT = 'approval_bands_start_at_zero',
                  TABLE = 'approval_bands';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER approval_bands_start_at_zero
    AFTER INSERT OR DELETE ON approval_bands DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION approval_bands_start_at_zero();
CREATE CONSTRAINT TRIGGER desk_approval_policies_start_at_zero
    AFTER INSERT ON desk_approval_policies DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION approval_bands_start_at_zero();
"""

# 0011's function, with two additions in 0016 (the sections below): an approval needs its
# approvals (counted here, in the deciding transaction, after the order row is locked), and
# approvals_required never changes. Without them it is 0011's function as it was.
MAKER_CHECKER_FUNCTION = """
CREATE OR REPLACE FUNCTION orders_enforce_maker_checker() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    approving boolean := NEW.status = 'APPROVED' AND OLD.status IS DISTINCT FROM 'APPROVED';
    rejecting boolean := NEW.status = 'REJECTED' AND OLD.status IS DISTINCT FROM 'REJECTED';
    decider bigint := CASE WHEN approving THEN NEW.approved_by ELSE NEW.rejected_by END;
    given integer;
BEGIN
    IF NEW.created_by IS DISTINCT FROM OLD.created_by
       OR NEW.created_by_key_id IS DISTINCT FROM OLD.created_by_key_id THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'the maker of an order never changes');
    END IF;
{fixed_approvals}    IF NEW.approved_by IS DISTINCT FROM OLD.approved_by AND NOT approving THEN
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
{enough_approvals}    -- With a request context (every application write) the decider is the acting person:
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
FIXED_APPROVALS = """
    IF NEW.approvals_required IS DISTINCT FROM OLD.approvals_required THEN
        PERFORM orders_maker_checker_refuse(NEW.id,
            'the approvals an order needs are fixed when it is submitted');
    END IF;
"""
ENOUGH_APPROVALS = """
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
"""

APPROVALS_TRIGGERS = """
DROP TRIGGER orders_maker_checker ON orders;
CREATE TRIGGER orders_maker_checker BEFORE UPDATE ON orders FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.approved_by IS DISTINCT FROM NEW.approved_by
          OR OLD.rejected_by IS DISTINCT FROM NEW.rejected_by
          OR OLD.risk_status IS DISTINCT FROM NEW.risk_status
          OR OLD.created_by IS DISTINCT FROM NEW.created_by
          OR OLD.created_by_key_id IS DISTINCT FROM NEW.created_by_key_id
          OR OLD.approvals_required IS DISTINCT FROM NEW.approvals_required)
    EXECUTE FUNCTION orders_enforce_maker_checker();

-- One approval of an order: the same rules as the approval itself, checked on the order row
-- as it is (the approver locked it first).
CREATE FUNCTION order_approvals_enforce_maker_checker() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    o orders%ROWTYPE;
BEGIN
    SELECT * INTO o FROM orders WHERE id = NEW.order_id;
    IF o.status IS DISTINCT FROM 'REVIEWED' OR o.risk_status IS DISTINCT FROM 'PASSED' THEN
        PERFORM orders_maker_checker_refuse(NEW.order_id, format(
            'it is %s with its risk check %s; approvals are given to a REVIEWED order whose'
            ' risk check PASSED', o.status, o.risk_status));
    END IF;
    IF NEW.approved_by = o.created_by THEN
        PERFORM orders_maker_checker_refuse(NEW.order_id,
            'an approval is never the order''s maker''s');
    END IF;
    IF tradeops_user_id() IS NOT NULL
       AND (NEW.approved_by <> tradeops_user_id() OR tradeops_role() IS DISTINCT FROM 'approver'
            OR tradeops_api_key_id() IS NOT NULL) THEN
        PERFORM orders_maker_checker_refuse(NEW.order_id,
            'an approval is the acting approver''s own, never through an API key');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER order_approvals_maker_checker BEFORE INSERT ON order_approvals
    FOR EACH ROW EXECUTE FUNCTION order_approvals_enforce_maker_checker();
"""

# 0011's trigger and function as they were.
MAKER_CHECKER_WITHOUT_APPROVALS = """
DROP TRIGGER orders_maker_checker ON orders;
CREATE TRIGGER orders_maker_checker BEFORE UPDATE ON orders FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.approved_by IS DISTINCT FROM NEW.approved_by
          OR OLD.rejected_by IS DISTINCT FROM NEW.rejected_by
          OR OLD.risk_status IS DISTINCT FROM NEW.risk_status
          OR OLD.created_by IS DISTINCT FROM NEW.created_by
          OR OLD.created_by_key_id IS DISTINCT FROM NEW.created_by_key_id)
    EXECUTE FUNCTION orders_enforce_maker_checker();
"""


def upgrade() -> None:
    op.create_table(
        "desk_approval_policies",
        sa.Column("desk_id", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("updated_by", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "currency ~ '^[A-Z]{3}$'", name=op.f("ck_desk_approval_policies_currency")
        ),
        sa.ForeignKeyConstraint(
            ["desk_id"], ["desks.id"], name=op.f("fk_desk_approval_policies_desk_id_desks")
        ),
        sa.ForeignKeyConstraint(
            ["updated_by"], ["users.id"], name=op.f("fk_desk_approval_policies_updated_by_users")
        ),
        sa.PrimaryKeyConstraint("desk_id", name=op.f("pk_desk_approval_policies")),
    )
    op.create_table(
        "approval_bands",
        sa.Column("desk_id", sa.BigInteger(), nullable=False),
        sa.Column("min_notional", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("approvals", sa.Integer(), nullable=False),
        sa.CheckConstraint("min_notional >= 0", name=op.f("ck_approval_bands_min_notional")),
        sa.CheckConstraint("approvals BETWEEN 1 AND 5", name=op.f("ck_approval_bands_approvals")),
        sa.ForeignKeyConstraint(
            ["desk_id"],
            ["desk_approval_policies.desk_id"],
            name=op.f("fk_approval_bands_desk_id_desk_approval_policies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("desk_id", "min_notional", name=op.f("pk_approval_bands")),
    )
    op.add_column(
        "orders",
        sa.Column("approvals_required", sa.Integer(), server_default="1", nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_orders_approvals_required"), "orders", "approvals_required BETWEEN 1 AND 5"
    )
    op.create_table(
        "order_approvals",
        sa.Column("order_id", sa.BigInteger(), nullable=False),
        sa.Column("desk_id", sa.BigInteger(), nullable=False),
        sa.Column("approved_by", sa.BigInteger(), nullable=False),
        sa.Column(
            "approved_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["order_id", "desk_id"],
            ["orders.id", "orders.desk_id"],
            name=op.f("fk_order_approvals_order_id_orders"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["approved_by"], ["users.id"], name=op.f("fk_order_approvals_approved_by_users")
        ),
        sa.PrimaryKeyConstraint("order_id", "approved_by", name=op.f("pk_order_approvals")),
    )
    op.execute(BACKFILL_APPROVALS)
    for table in for_each_table:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(POLICIES_AND_GRANTS)
    op.execute(BANDS_START_AT_ZERO)
    op.execute(
        MAKER_CHECKER_FUNCTION.format(
            fixed_approvals=FIXED_APPROVALS, enough_approvals=ENOUGH_APPROVALS
        )
    )
    op.execute(APPROVALS_TRIGGERS)


def downgrade() -> None:
    op.execute(MAKER_CHECKER_WITHOUT_APPROVALS)
    op.execute(MAKER_CHECKER_FUNCTION.format(fixed_approvals="", enough_approvals=""))
    op.drop_table("order_approvals")  # its trigger, policies and grants go with it
    op.execute("DROP FUNCTION order_approvals_enforce_maker_checker()")
    op.drop_constraint(op.f("ck_orders_approvals_required"), "orders")
    op.drop_column("orders", "approvals_required")
    op.drop_table("approval_bands")
    op.drop_table("desk_approval_policies")
    op.execute("DROP FUNCTION approval_bands_start_at_zero()")
