"""an audit event's desk worked out by an IF, not a query

Revision ID: 0031
Revises: 0030
Create Date: 2026-11-28

Every audit event's BEFORE INSERT trigger labels it with its desk (audit_event_desk,
migrations 0009 and 0024), and the function ran a SELECT for the CASE that picks it: 26 µs
for a new order's audit event. It is now an IF, whose branches for an order, a fill, a
position or a risk limit are expressions that PL/pgSQL evaluates without the executor
(2.5 µs); only a client's looks its desk up. The same desks, from the same rule.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0031"
down_revision: str | None = "0030"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DESK = """
CREATE OR REPLACE FUNCTION audit_event_desk(entity text, entity_id text, before jsonb, after jsonb)
RETURNS bigint LANGUAGE plpgsql STABLE AS $$
BEGIN"""

AS_AN_IF = f"""{_DESK}
    IF entity IN ('order', 'execution', 'position', 'risk_limit') THEN
        RETURN (COALESCE(after, before) ->> 'desk_id')::bigint;
    ELSIF entity = 'client' THEN
        RETURN (SELECT c.desk_id FROM clients c WHERE c.external_id = entity_id);
    END IF;
    RETURN NULL;
END $$;
"""  # noqa: S608 - SQL from constants only

# As migration 0024 wrote it.
AS_A_QUERY = f"""{_DESK}
    RETURN (
    SELECT CASE
        WHEN entity IN ('order', 'execution', 'position', 'risk_limit')
            THEN (COALESCE(after, before) ->> 'desk_id')::bigint
        WHEN entity = 'client'
            THEN (SELECT c.desk_id FROM clients c WHERE c.external_id = entity_id)
    END
    );
END $$;
"""  # noqa: S608 - SQL from constants only


def upgrade() -> None:
    op.execute(AS_AN_IF)


def downgrade() -> None:
    op.execute(AS_A_QUERY)
