"""an order's event names the change it records

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-27

0018 made a request's order event carry the order's version at the end of the statement,
so no event is appended without a change of the order. But a desk user writing directly as
the application role could still bump the version alone (`UPDATE orders SET version =
version + 1`, which no other rule watches) and append, say, an APPROVED event to a PENDING
order: a history step that never happened, and with it a signed `order.approved` webhook
and a stream announcement. Now the event's type must also be what the order became:

- a status event (REVIEWED, APPROVED, REJECTED, CANCELLED, EXPIRED, FILLED,
  PARTIALLY_FILLED, REPLACED) only when the order is in that status;
- CREATED only for a PENDING order; APPROVAL_RECORDED (an approval that is not the last)
  only for a REVIEWED one;
- RISK_CHECKED and RISK_CHECK_ERROR only with the order's risk status as their payload
  names it, and never PENDING;
- FILL_BUSTED only naming a bust of this order (an execution of kind BUST);
- no other type.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WITH_VERSION = """
    IF tradeops_user_id() IS NOT NULL
       AND NEW.seq IS DISTINCT FROM (SELECT version FROM orders WHERE id = NEW.order_id) THEN
        PERFORM orders_maker_checker_refuse(NEW.order_id,
            'an order''s event is written only with its change');
    END IF;"""

EVENT_NAMES_ITS_CHANGE = f"""
CREATE OR REPLACE FUNCTION order_events_enforce_with_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    o orders%ROWTYPE;
BEGIN{_WITH_VERSION}
    IF tradeops_user_id() IS NULL THEN
        RETURN NULL;  -- the owner, outside any request
    END IF;
    SELECT * INTO o FROM orders WHERE id = NEW.order_id;
    IF NOT COALESCE(CASE
        WHEN NEW.type IN ('REVIEWED', 'APPROVED', 'REJECTED', 'CANCELLED', 'EXPIRED', 'FILLED',
                          'PARTIALLY_FILLED', 'REPLACED') THEN o.status = NEW.type
        WHEN NEW.type = 'CREATED' THEN o.status = 'PENDING'
        WHEN NEW.type = 'APPROVAL_RECORDED' THEN o.status = 'REVIEWED'
        WHEN NEW.type IN ('RISK_CHECKED', 'RISK_CHECK_ERROR') THEN
            o.risk_status <> 'PENDING' AND o.risk_status = NEW.payload ->> 'risk_status'
        WHEN NEW.type = 'FILL_BUSTED' THEN EXISTS (
            SELECT FROM executions e
            WHERE e.id = (NEW.payload ->> 'bust_execution_id')::bigint
              AND e.order_id = NEW.order_id AND e.kind = 'BUST')
        ELSE false
    END, false) THEN
        PERFORM orders_maker_checker_refuse(NEW.order_id,
            format('a %s event does not record what the order became', NEW.type));
    END IF;
    RETURN NULL;
END $$;
"""  # noqa: S608 - SQL from constants only

# As 0018 wrote it.
EVENT_WITH_VERSION_ONLY = f"""
CREATE OR REPLACE FUNCTION order_events_enforce_with_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN{_WITH_VERSION}
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    op.execute(EVENT_NAMES_ITS_CHANGE)


def downgrade() -> None:
    op.execute(EVENT_WITH_VERSION_ONLY)
