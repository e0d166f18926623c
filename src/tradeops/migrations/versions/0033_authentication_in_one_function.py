"""authentication in one function, one level of calls fewer

Revision ID: 0033
Revises: 0032
Create Date: 2026-11-28

Every request authenticates through tradeops_authenticate (migration 0019): the first
statement of a transaction, and each one-statement read or intake (tradeops_read_order,
tradeops_read_portfolio, tradeops_submit_order, tradeops_record_order). It picked
tradeops_authenticate_key or _person and answered that function's rows, so each call ran two
PL/pgSQL functions, each with a query of its own and a set of rows to hand back. It now runs
the key's or the person's statement itself, the same text as 0023's, and the two functions
are gone: one function where there were three. `SELECT * FROM tradeops_authenticate(...)`
with an API key, pgbench on one connection at this revision and 0032 taking turns: a few µs
less a call of about 85, at the edge of what the pairs tell (10, -1 and 4 µs on average in
three series; docs/benchmarks.md). The same principal, context and grants.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0033"
down_revision: str | None = "0032"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each statement as migration 0023 wrote it, in its own function's parameters.
BY_PERSON = """
    SELECT u.id, u.email, u.role, ctx.desk_ids, ctx.all_desks, NULL::bigint, NULL::text[],
       false, u.page_session_generation, concat(
        set_config('role', {role}, true),
        set_config('tradeops.user_id', u.id::text, true),
        set_config('tradeops.role', u.role, true),
        set_config('tradeops.desk_ids', ctx.desk_ids::text, true),
        set_config('tradeops.all_desks', ctx.all_desks::text, true),
        set_config('tradeops.api_key_id', COALESCE(ctx.key_id::text, ''), true),
        set_config('tradeops.request_id', {request_id}, true)) AS context
FROM users u
CROSS JOIN LATERAL (
    SELECT COALESCE(array_agg(m.desk_id ORDER BY m.desk_id), '{{}}') AS desk_ids,
           u.role IN ('risk', 'admin') AS all_desks, NULL::bigint AS key_id
    FROM desk_members m WHERE m.user_id = u.id
) ctx
WHERE u.active AND u.role <> 'system'
  -- As 0019's CASE, in a form a kept plan serves by either index (id, e-mail).
  AND (u.id = {user_id} OR ({user_id} IS NULL AND u.email = {email}));"""

BY_KEY = """
    SELECT u.id, u.email, u.role, ctx.desk_ids, ctx.all_desks, k.id, k.scopes,
       k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds',
       u.page_session_generation, concat(
        set_config('role', {role}, true),
        set_config('tradeops.user_id', u.id::text, true),
        set_config('tradeops.role', u.role, true),
        set_config('tradeops.desk_ids', ctx.desk_ids::text, true),
        set_config('tradeops.all_desks', ctx.all_desks::text, true),
        set_config('tradeops.api_key_id', COALESCE(ctx.key_id::text, ''), true),
        set_config('tradeops.request_id', {request_id}, true)) AS context
FROM api_keys k
JOIN users u ON u.id = k.owner_user_id
CROSS JOIN LATERAL (
    SELECT CASE WHEN u.role IN ('risk', 'admin') THEN COALESCE(k.desk_ids, '{{}}')
                ELSE COALESCE((SELECT array_agg(m.desk_id ORDER BY m.desk_id) FROM desk_members m
                               WHERE m.user_id = u.id
                                 AND (k.desk_ids IS NULL OR m.desk_id = ANY(k.desk_ids))), '{{}}')
           END AS desk_ids,
           u.role IN ('risk', 'admin') AND k.desk_ids IS NULL AS all_desks,
           k.id AS key_id
) ctx
WHERE k.prefix = {prefix} AND k.hash = {hash} AND k.revoked_at IS NULL
  AND (k.expires_at IS NULL OR k.expires_at > now()) AND u.active AND u.role <> 'system';"""

AUTHENTICATE = "tradeops_authenticate(text, text, bigint, text, text, text)"
_WRAPPER = f"""
CREATE OR REPLACE FUNCTION {AUTHENTICATE}
RETURNS SETOF tradeops_principal LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF $1 IS NOT NULL THEN
        RETURN QUERY{{key}}
    ELSE
        RETURN QUERY{{person}}
    END IF;
END $$;
"""

# ($1 prefix, $2 hash, $3 id, $4 e-mail, $5 the application role, $6 the request id)
IN_ONE = _WRAPPER.format(
    key=BY_KEY.format(prefix="$1", hash="$2", role="$5", request_id="$6"),
    person=BY_PERSON.format(user_id="$3", email="$4", role="$5", request_id="$6"),
)


def _function(signature: str, statement: str) -> str:
    return f"""
CREATE FUNCTION {signature}
RETURNS SETOF tradeops_principal LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY{statement}
END $$;
REVOKE ALL ON FUNCTION {signature} FROM PUBLIC;
"""


# As 0019 and 0023 left them: the wrapper calls one of two functions.
IN_THREE = (
    _function(
        "tradeops_authenticate_person(bigint, text, text, text)",
        BY_PERSON.format(user_id="$1", email="$2", role="$3", request_id="$4"),
    )
    + _function(
        "tradeops_authenticate_key(text, text, text, text)",
        BY_KEY.format(prefix="$1", hash="$2", role="$3", request_id="$4"),
    )
    + _WRAPPER.format(
        key=" SELECT * FROM tradeops_authenticate_key($1, $2, $5, $6);",
        person=" SELECT * FROM tradeops_authenticate_person($3, $4, $5, $6);",
    )
)


def upgrade() -> None:
    op.execute(IN_ONE)
    op.execute("DROP FUNCTION tradeops_authenticate_key(text, text, text, text)")
    op.execute("DROP FUNCTION tradeops_authenticate_person(bigint, text, text, text)")


def downgrade() -> None:
    op.execute(IN_THREE)
