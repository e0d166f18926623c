"""maker-checker in the database

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27

Maker-checker had no database twin: "approve only a REVIEWED order whose risk check PASSED,
never by its maker" lived only in orders/workflow.py, so any direct writer could approve its
own order. Now triggers on orders refuse, for every writer (the application role and the
migration owner alike: triggers, unlike row-level security, bind a table's owner):

- a move to APPROVED unless the order was REVIEWED, its risk check PASSED and approved_by
  names someone other than the maker; a move to REJECTED unless rejected_by (new) names
  someone other than the maker; approved_by or rejected_by set by anything but that move;
- a change of the maker (created_by, created_by_key_id), which would let a maker become a
  checker of their own order;
- an order inserted already decided or reviewed (an order is born PENDING).

When the writer has a request context (the application always does), the decider must be
the acting person: an approver, not through an API key; and only the system (the risk job)
may set an order's risk status. A writer without a context (the migration owner) is held to
the rules about the row only.

The maker's key owner: a composite foreign key (created_by_key_id, created_by) →
api_keys (id, owner_user_id) makes the owner of the key an order was submitted with its
maker, for every row, so "not the maker" already means "not the maker's key owner". That is
safer than looking the owner up in the trigger: api_keys is under row-level security (an
approver may not read another user's keys), so a lookup would need a SECURITY DEFINER
function, which the design avoids; foreign key checks bypass row-level security by design
and cost one index probe at intake, nothing at approval.

Refusals are check_violation (23514) naming the constraint orders_maker_checker, which the
API turns into a 409 problem (tradeops.db.errors): the Python rules explain a refusal first,
so the database refuses only on a race or drift.

Audit events' actor, api_key_id and request_id, and order events' actor, default from the
transaction's context; the actor format ("user:7", "user:7/key:3") is tradeops_actor()
(migration 0003), written once. Writers without a context (sign-in, the risk job's
"system:risk-check") still name their actor.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The same NULLIF(…, '') as the row-level security functions: a pooled connection reads a
# setting back as '' once set, which must mean "none".
CONTEXT_FUNCTIONS = """
CREATE FUNCTION tradeops_api_key_id() RETURNS bigint LANGUAGE sql STABLE AS
    $$ SELECT CASE WHEN tradeops_user_id() IS NOT NULL
               THEN NULLIF(current_setting('tradeops.api_key_id', true), '')::bigint END $$;
CREATE FUNCTION tradeops_request_id() RETURNS text LANGUAGE sql STABLE AS
    $$ SELECT NULLIF(current_setting('tradeops.request_id', true), '') $$;
CREATE OR REPLACE FUNCTION tradeops_actor() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT 'user:' || tradeops_user_id() || COALESCE('/key:' || tradeops_api_key_id(), '')
$$;
"""

OLD_ACTOR = """
CREATE OR REPLACE FUNCTION tradeops_actor() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT 'user:' || tradeops_user_id()
        || COALESCE('/key:' || NULLIF(current_setting('tradeops.api_key_id', true), ''), '')
$$;
"""

AUDIT_DEFAULTS = """
ALTER TABLE order_events ALTER COLUMN actor SET DEFAULT tradeops_actor();
ALTER TABLE audit_events
    ALTER COLUMN actor SET DEFAULT tradeops_actor(),
    ALTER COLUMN api_key_id SET DEFAULT tradeops_api_key_id(),
    ALTER COLUMN request_id SET DEFAULT tradeops_request_id();
"""

NO_AUDIT_DEFAULTS = """
ALTER TABLE order_events ALTER COLUMN actor DROP DEFAULT;
ALTER TABLE audit_events
    ALTER COLUMN actor DROP DEFAULT,
    ALTER COLUMN api_key_id DROP DEFAULT,
    ALTER COLUMN request_id DROP DEFAULT;
"""

# Rejections so far are recorded in the order's history only; their decider comes from there.
BACKFILL_REJECTED_BY = r"""
UPDATE orders o SET rejected_by = substring(e.actor FROM '^user:(\d+)')::bigint
FROM order_events e
WHERE e.order_id = o.id AND e.type = 'REJECTED' AND o.status = 'REJECTED';
"""

MAKER_CHECKER = """
CREATE FUNCTION orders_maker_checker_refuse(order_id bigint, reason text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'maker-checker: order %: %', order_id, reason
        USING ERRCODE = 'check_violation', CONSTRAINT = 'orders_maker_checker',
              TABLE = 'orders';
END $$;

CREATE FUNCTION orders_enforce_maker_checker() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    approving boolean := NEW.status = 'APPROVED' AND OLD.status IS DISTINCT FROM 'APPROVED';
    rejecting boolean := NEW.status = 'REJECTED' AND OLD.status IS DISTINCT FROM 'REJECTED';
    decider bigint := CASE WHEN approving THEN NEW.approved_by ELSE NEW.rejected_by END;
BEGIN
    IF NEW.created_by IS DISTINCT FROM OLD.created_by
       OR NEW.created_by_key_id IS DISTINCT FROM OLD.created_by_key_id THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'the maker of an order never changes');
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

-- An order is born undecided: PENDING, nobody's review or decision on it yet, and (for a
-- writer with a context other than the system) its risk check still to come.
CREATE FUNCTION orders_enforce_undecided_birth() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM 'PENDING' OR NEW.reviewed_by IS NOT NULL
       OR NEW.approved_by IS NOT NULL OR NEW.rejected_by IS NOT NULL THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'an order is submitted PENDING, undecided');
    END IF;
    IF NEW.risk_status IS DISTINCT FROM 'PENDING'
       AND tradeops_user_id() IS NOT NULL AND tradeops_role() IS DISTINCT FROM 'system' THEN
        PERFORM orders_maker_checker_refuse(NEW.id, 'only the risk check sets the risk status');
    END IF;
    RETURN NEW;
END $$;

-- Only when something maker-checker cares about changes (status, decider, risk status,
-- maker); every other update, a further partial fill say, skips the call entirely.
CREATE TRIGGER orders_maker_checker BEFORE UPDATE ON orders FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.approved_by IS DISTINCT FROM NEW.approved_by
          OR OLD.rejected_by IS DISTINCT FROM NEW.rejected_by
          OR OLD.risk_status IS DISTINCT FROM NEW.risk_status
          OR OLD.created_by IS DISTINCT FROM NEW.created_by
          OR OLD.created_by_key_id IS DISTINCT FROM NEW.created_by_key_id)
    EXECUTE FUNCTION orders_enforce_maker_checker();
-- Intake as it should be (PENDING, nothing decided, risk unchecked) never calls it.
CREATE TRIGGER orders_undecided_birth BEFORE INSERT ON orders FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM 'PENDING' OR NEW.risk_status IS DISTINCT FROM 'PENDING'
          OR NEW.reviewed_by IS NOT NULL OR NEW.approved_by IS NOT NULL
          OR NEW.rejected_by IS NOT NULL)
    EXECUTE FUNCTION orders_enforce_undecided_birth();
"""

DROP_MAKER_CHECKER = """
DROP TRIGGER orders_undecided_birth ON orders;
DROP TRIGGER orders_maker_checker ON orders;
DROP FUNCTION orders_enforce_undecided_birth(), orders_enforce_maker_checker(),
    orders_maker_checker_refuse(bigint, text);
"""


def upgrade() -> None:
    op.add_column("orders", sa.Column("rejected_by", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_orders_rejected_by_users"), "orders", "users", ["rejected_by"], ["id"]
    )
    op.execute(BACKFILL_REJECTED_BY)
    # The row rules that need no history: a check, cheaper than any trigger.
    op.create_check_constraint(
        op.f("ck_orders_approver_is_not_maker"),
        "orders",
        "approved_by IS NULL OR approved_by <> created_by",
    )
    op.create_check_constraint(
        op.f("ck_orders_rejecter_is_not_maker"),
        "orders",
        "rejected_by IS NULL OR rejected_by <> created_by",
    )
    op.create_check_constraint(
        op.f("ck_orders_approved_has_approver"),
        "orders",
        "status NOT IN ('APPROVED', 'PARTIALLY_FILLED', 'FILLED') OR approved_by IS NOT NULL",
    )
    op.create_check_constraint(
        op.f("ck_orders_rejected_has_rejecter"),
        "orders",
        "(status = 'REJECTED') = (rejected_by IS NOT NULL)",
    )
    op.create_unique_constraint(
        op.f("uq_api_keys_id_owner_user_id"), "api_keys", ["id", "owner_user_id"]
    )
    op.create_foreign_key(
        op.f("fk_orders_created_by_key_id_api_keys"),
        "orders",
        "api_keys",
        ["created_by_key_id", "created_by"],
        ["id", "owner_user_id"],
    )
    op.execute(CONTEXT_FUNCTIONS)
    op.execute(MAKER_CHECKER)
    op.execute(AUDIT_DEFAULTS)


def downgrade() -> None:
    op.execute(NO_AUDIT_DEFAULTS)
    op.execute(DROP_MAKER_CHECKER)
    op.execute(OLD_ACTOR)
    op.execute("DROP FUNCTION tradeops_request_id(), tradeops_api_key_id()")
    op.drop_constraint(op.f("fk_orders_created_by_key_id_api_keys"), "orders")
    op.drop_constraint(op.f("uq_api_keys_id_owner_user_id"), "api_keys")
    for name in (
        "rejected_has_rejecter",
        "approved_has_approver",
        "rejecter_is_not_maker",
        "approver_is_not_maker",
    ):
        op.drop_constraint(op.f(f"ck_orders_{name}"), "orders")
    op.drop_constraint(op.f("fk_orders_rejected_by_users"), "orders")
    op.drop_column("orders", "rejected_by")
