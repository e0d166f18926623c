"""audit event desks

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27

Audit events carry the desk they concern, and row-level security shows them by the same rule
as the desks' own rows: a key narrowed to EQ-US no longer reads FI-EU's order, client,
position, execution and risk limit events. Events that concern no desk (users, keys, logins,
instruments, desks, market data, agent tool calls) keep desk_id NULL and stay visible to every
auditor.

The database derives the desk in a BEFORE INSERT trigger, so no writer can forget it: from the
payload's desk_id for events whose payload is the row itself (orders, executions, positions,
risk limits) and from the client row for clients. A CHECK refuses a desk-bound event without
a desk, so a derivation that finds nothing fails loudly instead of publishing the event to
every desk.

desk_id is not part of the hash. It is an access label derived from fields the hash already
covers (entity, entity_id, the payload), not a fact of the change; keeping it out leaves every
existing hash valid as it is (the backfill rewrites no history) and spares the chain a second
hash version. A relabelled event could change who may read it, never what the trail says, and
verification re-derives every label from the hashed fields and reports a mismatch.

Payloads are not rewritten: jsonb keeps numeric exactly, and the API renders their decimals
as strings when it reads them (tradeops.audit.service), for old and new events alike, so no
hash changes and the write path pays nothing (rewriting every payload in the trigger cost
about 0.5 ms per event, more than the insert itself).

Signing a checkpoint needs a context that sees every desk: a checkpoint over a filtered trail
would carry a wrong root.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The entities whose events concern one desk; every other entity is desk-less.
DESK_BOUND = ("order", "execution", "position", "risk_limit", "client")
DESK_BOUND_SQL = ", ".join(f"'{entity}'" for entity in DESK_BOUND)

DESK_FUNCTIONS = r"""
CREATE FUNCTION audit_event_desk(entity text, entity_id text, before jsonb, after jsonb)
RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN entity IN ('order', 'execution', 'position', 'risk_limit')
            THEN (COALESCE(after, before) ->> 'desk_id')::bigint
        WHEN entity = 'client'
            THEN (SELECT c.desk_id FROM clients c WHERE c.external_id = entity_id)
    END
$$;

-- Its own trigger beside the chain's: the label is not hashed, so the order of the two does
-- not matter, and row-level security checks the row after every BEFORE trigger has run.
CREATE FUNCTION audit_events_label_desk() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.desk_id := COALESCE(NEW.desk_id,
        audit_event_desk(NEW.entity, NEW.entity_id, NEW.before, NEW.after));
    RETURN NEW;
END $$;
"""

# The visibility rule of orders (tradeops_can_see_desk), for auditors only, and desk-less
# events for every auditor. Writers may only label an event with a desk they see.
POLICIES = """
DROP POLICY audit_events_read ON audit_events;
CREATE POLICY audit_events_read ON audit_events FOR SELECT
    USING (current_user <> 'tradeops_app'
           OR (tradeops_role() IN ('risk', 'admin', 'system')
               AND (desk_id IS NULL OR tradeops_can_see_desk(desk_id))));
DROP POLICY audit_events_append ON audit_events;
CREATE POLICY audit_events_append ON audit_events FOR INSERT
    WITH CHECK (current_user <> 'tradeops_app'
                OR (tradeops_user_id() IS NOT NULL
                    AND (desk_id IS NULL OR tradeops_can_see_desk(desk_id))));
DROP POLICY audit_checkpoints_append ON audit_checkpoints;
CREATE POLICY audit_checkpoints_append ON audit_checkpoints FOR INSERT
    WITH CHECK (current_user <> 'tradeops_app'
                OR (tradeops_role() IN ('risk', 'admin', 'system') AND tradeops_all_desks()));
"""

OLD_POLICIES = """
DROP POLICY audit_events_read ON audit_events;
CREATE POLICY audit_events_read ON audit_events FOR SELECT
    USING (current_user <> 'tradeops_app' OR tradeops_role() IN ('risk', 'admin', 'system'));
DROP POLICY audit_events_append ON audit_events;
CREATE POLICY audit_events_append ON audit_events FOR INSERT
    WITH CHECK (current_user <> 'tradeops_app' OR tradeops_user_id() IS NOT NULL);
DROP POLICY audit_checkpoints_append ON audit_checkpoints;
CREATE POLICY audit_checkpoints_append ON audit_checkpoints FOR INSERT
    WITH CHECK (current_user <> 'tradeops_app' OR tradeops_role() IN ('risk', 'admin', 'system'));
"""

# The label only: no hashed field changes, so the append-only trigger is paused for this
# one statement of the owner's migration, not for anyone else.
BACKFILL = f"""
ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only;
UPDATE audit_events SET desk_id = audit_event_desk(entity, entity_id, before, after)
    WHERE entity IN ({DESK_BOUND_SQL});
ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only;
"""  # noqa: S608 - constants only


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("desk_id", sa.BigInteger(), nullable=True))
    op.create_foreign_key(
        op.f("fk_audit_events_desk_id_desks"), "audit_events", "desks", ["desk_id"], ["id"]
    )
    op.execute(DESK_FUNCTIONS)
    op.execute(BACKFILL)
    op.create_check_constraint(
        op.f("ck_audit_events_desk_bound_has_desk"),
        "audit_events",
        f"entity NOT IN ({DESK_BOUND_SQL}) OR desk_id IS NOT NULL",
    )
    op.create_index("ix_audit_events_desk_id_id", "audit_events", ["desk_id", "id"])
    op.execute(
        "CREATE TRIGGER audit_events_label_desk BEFORE INSERT ON audit_events"
        " FOR EACH ROW EXECUTE FUNCTION audit_events_label_desk()"
    )
    op.execute(POLICIES)


def downgrade() -> None:
    op.execute(OLD_POLICIES)
    op.execute("DROP TRIGGER audit_events_label_desk ON audit_events")
    op.drop_index("ix_audit_events_desk_id_id", table_name="audit_events")
    op.drop_constraint(op.f("ck_audit_events_desk_bound_has_desk"), "audit_events")
    op.drop_constraint(op.f("fk_audit_events_desk_id_desks"), "audit_events")
    op.drop_column("audit_events", "desk_id")
    op.execute(
        "DROP FUNCTION audit_events_label_desk(), audit_event_desk(text, text, jsonb, jsonb)"
    )
