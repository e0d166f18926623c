"""the actor's format written once

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-27

How a person or their key is named in histories, the audit trail and idempotency keys
("user:7", "user:7/key:3") was written three times: tradeops_actor() for the request
context, `Principal.actor` in Python (idempotency keys, which row-level security compares
with tradeops_actor()), and sign-in's own strings for the events it records before anyone
is signed in. If they drifted, a key would stop replaying and the trail would name one
person two ways. Now it is one function, tradeops_actor_of(user, key); tradeops_actor() is
it applied to the context, and the code passes ids, never the text.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTOR_OF = """
CREATE FUNCTION tradeops_actor_of(user_id bigint, api_key_id bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'user:' || user_id || COALESCE('/key:' || api_key_id, '')
$$;
CREATE OR REPLACE FUNCTION tradeops_actor() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT tradeops_actor_of(tradeops_user_id(), tradeops_api_key_id())
$$;
"""

# As 0011 wrote it.
ACTOR_IN_CONTEXT_ONLY = """
CREATE OR REPLACE FUNCTION tradeops_actor() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT 'user:' || tradeops_user_id() || COALESCE('/key:' || tradeops_api_key_id(), '')
$$;
DROP FUNCTION tradeops_actor_of(bigint, bigint);
"""


def upgrade() -> None:
    op.execute(ACTOR_OF)


def downgrade() -> None:
    op.execute(ACTOR_IN_CONTEXT_ONLY)
