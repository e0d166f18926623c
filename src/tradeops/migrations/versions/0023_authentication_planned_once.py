"""authentication planned once per connection

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-27

Issue 15: every request's first statement (and every one-statement read) calls
tradeops_authenticate, which called tradeops_authenticate_key or _person, two LANGUAGE sql
functions. PostgreSQL cannot inline a set-returning VOLATILE SQL function, and before
version 18 it plans such a function's body anew on every call: for an API key, the join of
api_keys, users and the desk memberships was planned once per request. As PL/pgSQL the same
statements keep their plans for the connection's life (the pool keeps connections).
Measured on PostgreSQL 15 (this machine's server), PostgreSQL CPU per call (3,000 calls per
round, 4-5 interleaved rounds, medians): tradeops_authenticate with an API key 0.313 ->
0.090 ms, a person by e-mail 0.197 -> 0.080, by id 0.190 -> 0.077; the whole one-statement
GET /orders/{id} with a key 0.465 -> 0.200 ms. PostgreSQL 18 caches SQL functions' plans
itself (the embedded server `make run` and `make bench` use is 18): there it changes nothing.
Same statements, same answers, same grants; the person's id-else-e-mail condition is written
so a kept plan serves it by either index.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PLANNED_ONCE = """
-- A person, by the id of a verified token or a page session (else by e-mail, one row at
-- most: the context set is the row's answered), with the desks of their membership.
-- ($1 id, $2 e-mail, $3 the application role, $4 the request id)
CREATE OR REPLACE FUNCTION tradeops_authenticate_person(bigint, text, text, text)
RETURNS SETOF tradeops_principal LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY
    SELECT u.id, u.email, u.role, ctx.desk_ids, ctx.all_desks, NULL::bigint, NULL::text[],
       false, u.page_session_generation, concat(
        set_config('role', $3, true),
        set_config('tradeops.user_id', u.id::text, true),
        set_config('tradeops.role', u.role, true),
        set_config('tradeops.desk_ids', ctx.desk_ids::text, true),
        set_config('tradeops.all_desks', ctx.all_desks::text, true),
        set_config('tradeops.api_key_id', COALESCE(ctx.key_id::text, ''), true),
        set_config('tradeops.request_id', $4, true)) AS context
FROM users u
CROSS JOIN LATERAL (
    SELECT COALESCE(array_agg(m.desk_id ORDER BY m.desk_id), '{}') AS desk_ids,
           u.role IN ('risk', 'admin') AS all_desks, NULL::bigint AS key_id
    FROM desk_members m WHERE m.user_id = u.id
) ctx
WHERE u.active AND u.role <> 'system'
  -- As 0019's CASE, in a form a kept plan serves by either index (id, e-mail).
  AND (u.id = $1 OR ($1 IS NULL AND u.email = $2));
END $$;

-- An API key, by prefix and hash, unrevoked and unexpired, of an active owner. Risk and
-- admin keys see every desk unless the key names some; others see the owner's desks,
-- narrowed to the key's. `touch`: last_used_at is over a minute old (auth/key_usage.py
-- writes it later, on the primary: authenticating never writes).
-- ($1 prefix, $2 hash, $3 the application role, $4 the request id)
CREATE OR REPLACE FUNCTION tradeops_authenticate_key(text, text, text, text)
RETURNS SETOF tradeops_principal LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY
    SELECT u.id, u.email, u.role, ctx.desk_ids, ctx.all_desks, k.id, k.scopes,
       k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds',
       u.page_session_generation, concat(
        set_config('role', $3, true),
        set_config('tradeops.user_id', u.id::text, true),
        set_config('tradeops.role', u.role, true),
        set_config('tradeops.desk_ids', ctx.desk_ids::text, true),
        set_config('tradeops.all_desks', ctx.all_desks::text, true),
        set_config('tradeops.api_key_id', COALESCE(ctx.key_id::text, ''), true),
        set_config('tradeops.request_id', $4, true)) AS context
FROM api_keys k
JOIN users u ON u.id = k.owner_user_id
CROSS JOIN LATERAL (
    SELECT CASE WHEN u.role IN ('risk', 'admin') THEN COALESCE(k.desk_ids, '{}')
                ELSE COALESCE((SELECT array_agg(m.desk_id ORDER BY m.desk_id) FROM desk_members m
                               WHERE m.user_id = u.id
                                 AND (k.desk_ids IS NULL OR m.desk_id = ANY(k.desk_ids))), '{}')
           END AS desk_ids,
           u.role IN ('risk', 'admin') AND k.desk_ids IS NULL AS all_desks,
           k.id AS key_id
) ctx
WHERE k.prefix = $1 AND k.hash = $2 AND k.revoked_at IS NULL
  AND (k.expires_at IS NULL OR k.expires_at > now()) AND u.active AND u.role <> 'system';
END $$;
"""

# As 0019 wrote them.
PLANNED_PER_CALL = """
-- A person, by the id of a verified token or a page session (else by e-mail, one row at
-- most: the context set is the row's answered), with the desks of their membership.
-- ($1 id, $2 e-mail, $3 the application role, $4 the request id)
CREATE OR REPLACE FUNCTION tradeops_authenticate_person(bigint, text, text, text)
RETURNS SETOF tradeops_principal LANGUAGE sql VOLATILE AS $$
SELECT u.id, u.email, u.role, ctx.desk_ids, ctx.all_desks, NULL::bigint, NULL::text[], false,
       u.page_session_generation, concat(
        set_config('role', $3, true),
        set_config('tradeops.user_id', u.id::text, true),
        set_config('tradeops.role', u.role, true),
        set_config('tradeops.desk_ids', ctx.desk_ids::text, true),
        set_config('tradeops.all_desks', ctx.all_desks::text, true),
        set_config('tradeops.api_key_id', COALESCE(ctx.key_id::text, ''), true),
        set_config('tradeops.request_id', $4, true)) AS context
FROM users u
CROSS JOIN LATERAL (
    SELECT COALESCE(array_agg(m.desk_id ORDER BY m.desk_id), '{}') AS desk_ids,
           u.role IN ('risk', 'admin') AS all_desks, NULL::bigint AS key_id
    FROM desk_members m WHERE m.user_id = u.id
) ctx
WHERE u.active AND u.role <> 'system'
  AND CASE WHEN $1 IS NOT NULL THEN u.id = $1 ELSE u.email = $2 END
$$;

-- An API key, by prefix and hash, unrevoked and unexpired, of an active owner. Risk and
-- admin keys see every desk unless the key names some; others see the owner's desks,
-- narrowed to the key's. `touch`: last_used_at is over a minute old (auth/key_usage.py
-- writes it later, on the primary: authenticating never writes).
-- ($1 prefix, $2 hash, $3 the application role, $4 the request id)
CREATE OR REPLACE FUNCTION tradeops_authenticate_key(text, text, text, text)
RETURNS SETOF tradeops_principal LANGUAGE sql VOLATILE AS $$
SELECT u.id, u.email, u.role, ctx.desk_ids, ctx.all_desks, k.id, k.scopes,
       k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds',
       u.page_session_generation, concat(
        set_config('role', $3, true),
        set_config('tradeops.user_id', u.id::text, true),
        set_config('tradeops.role', u.role, true),
        set_config('tradeops.desk_ids', ctx.desk_ids::text, true),
        set_config('tradeops.all_desks', ctx.all_desks::text, true),
        set_config('tradeops.api_key_id', COALESCE(ctx.key_id::text, ''), true),
        set_config('tradeops.request_id', $4, true)) AS context
FROM api_keys k
JOIN users u ON u.id = k.owner_user_id
CROSS JOIN LATERAL (
    SELECT CASE WHEN u.role IN ('risk', 'admin') THEN COALESCE(k.desk_ids, '{}')
                ELSE COALESCE((SELECT array_agg(m.desk_id ORDER BY m.desk_id) FROM desk_members m
                               WHERE m.user_id = u.id
                                 AND (k.desk_ids IS NULL OR m.desk_id = ANY(k.desk_ids))), '{}')
           END AS desk_ids,
           u.role IN ('risk', 'admin') AND k.desk_ids IS NULL AS all_desks,
           k.id AS key_id
) ctx
WHERE k.prefix = $1 AND k.hash = $2 AND k.revoked_at IS NULL
  AND (k.expires_at IS NULL OR k.expires_at > now()) AND u.active AND u.role <> 'system'
$$;
"""


def upgrade() -> None:
    op.execute(PLANNED_ONCE)


def downgrade() -> None:
    op.execute(PLANNED_PER_CALL)
