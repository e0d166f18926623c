"""one-statement reads

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-27

Issue 15 item 1: a hot read costs one round trip. Until now every request was BEGIN (with its
limits), the authenticating statement, the read, COMMIT: four round trips, three of them
only there to carry the context. The read now travels with its authentication:

- `tradeops_authenticate` (by `tradeops_authenticate_key` or `_person`) is the
  authenticating statement itself (they were SQL in auth/authentication.py): each finds the principal
  and, for the row it returns, switches to the application role and publishes the request
  context, all transaction-local. Every request authenticates through them, so the rule of
  who is who lives in one place.
- `orders_as_shown` is an order as the API shows it (external ids, symbols, e-mails, the
  approvals), a view with security_invoker: read as the application role, row-level security
  applies to every table under it.
- `tradeops_read_order` is GET /orders/{id} in one statement: it authenticates, and only for
  a principal found (so only after the role switch and the context) reads the order, under
  row-level security and the same desk condition as the service. No principal: no rows, and
  nothing protected was read. Called on its own (autocommit), the statement is its
  transaction: the context dies with it, on a pooled or PgBouncer'd connection alike.
- `tradeops_read_portfolio`, the same for GET /clients/{id}/portfolio, whose document (the
  SQL positions.repository built) is now `tradeops_portfolio_document`.
- Every row-level security policy reads the request context once per statement, not once
  per row: `tradeops_user_id()` becomes `(SELECT tradeops_user_id())`, an InitPlan, and
  `tradeops_can_see_desk(desk_id)` its two halves so. The functions are STABLE, so the
  value is the same; reading the settings and parsing the desk list for each row cost a
  500-position portfolio about a fifth of its PostgreSQL time. A policy written later
  should use the same form.
- The latest-price index takes the tie-break column (`id DESC`) too, so a portfolio reads
  each position's price straight off it.
"""

import re
from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The context as db/uow.py CONTEXT_SETTINGS names it, for the principal found in `u`/`ctx`.
_CONTEXT = """concat(
        set_config('role', $3, true),
        set_config('tradeops.user_id', u.id::text, true),
        set_config('tradeops.role', u.role, true),
        set_config('tradeops.desk_ids', ctx.desk_ids::text, true),
        set_config('tradeops.all_desks', ctx.all_desks::text, true),
        set_config('tradeops.api_key_id', COALESCE(ctx.key_id::text, ''), true),
        set_config('tradeops.request_id', $4, true)) AS context"""

# Risk and admin see every desk (auth/principal.py EVERY_DESK_ROLES).
_EVERY_DESK = "u.role IN ('risk', 'admin')"

AUTHENTICATE = f"""
CREATE TYPE tradeops_principal AS (
    user_id bigint, email text, role text, desk_ids bigint[], all_desks boolean,
    key_id bigint, scopes text[], touch boolean, page_session_generation integer, context text
);

-- A person, by the id of a verified token or a page session (else by e-mail, one row at
-- most: the context set is the row's answered), with the desks of their membership.
-- ($1 id, $2 e-mail, $3 the application role, $4 the request id)
CREATE FUNCTION tradeops_authenticate_person(bigint, text, text, text)
RETURNS SETOF tradeops_principal LANGUAGE sql VOLATILE AS $$
SELECT u.id, u.email, u.role, ctx.desk_ids, ctx.all_desks, NULL::bigint, NULL::text[], false,
       u.page_session_generation, {_CONTEXT}
FROM users u
CROSS JOIN LATERAL (
    SELECT COALESCE(array_agg(m.desk_id ORDER BY m.desk_id), '{{}}') AS desk_ids,
           {_EVERY_DESK} AS all_desks, NULL::bigint AS key_id
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
CREATE FUNCTION tradeops_authenticate_key(text, text, text, text)
RETURNS SETOF tradeops_principal LANGUAGE sql VOLATILE AS $$
SELECT u.id, u.email, u.role, ctx.desk_ids, ctx.all_desks, k.id, k.scopes,
       k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds',
       u.page_session_generation, {_CONTEXT}
FROM api_keys k
JOIN users u ON u.id = k.owner_user_id
CROSS JOIN LATERAL (
    SELECT CASE WHEN {_EVERY_DESK} THEN COALESCE(k.desk_ids, '{{}}')
                ELSE COALESCE((SELECT array_agg(m.desk_id ORDER BY m.desk_id) FROM desk_members m
                               WHERE m.user_id = u.id
                                 AND (k.desk_ids IS NULL OR m.desk_id = ANY(k.desk_ids))), '{{}}')
           END AS desk_ids,
           {_EVERY_DESK} AND k.desk_ids IS NULL AS all_desks,
           k.id AS key_id
) ctx
WHERE k.prefix = $1 AND k.hash = $2 AND k.revoked_at IS NULL
  AND (k.expires_at IS NULL OR k.expires_at > now()) AND u.active AND u.role <> 'system'
$$;

-- Either credential: an API key's prefix and hash ($1, $2), else a person's id or e-mail
-- ($3, $4); $5 the application role, $6 the request id. What every request's first
-- statement and every one-statement read call.
CREATE FUNCTION tradeops_authenticate(text, text, bigint, text, text, text)
RETURNS SETOF tradeops_principal LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF $1 IS NOT NULL THEN
        RETURN QUERY SELECT * FROM tradeops_authenticate_key($1, $2, $5, $6);
    ELSE
        RETURN QUERY SELECT * FROM tradeops_authenticate_person($3, $4, $5, $6);
    END IF;
END $$;

-- The login role authenticates; the application role may not (it cannot read the hashes).
REVOKE ALL ON FUNCTION tradeops_authenticate_person(bigint, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION tradeops_authenticate_key(text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION tradeops_authenticate(text, text, bigint, text, text, text) FROM PUBLIC;
"""  # noqa: S608 - SQL from constants only

DROP_AUTHENTICATE = """
DROP FUNCTION tradeops_authenticate(text, text, bigint, text, text, text);
DROP FUNCTION tradeops_authenticate_key(text, text, text, text);
DROP FUNCTION tradeops_authenticate_person(bigint, text, text, text);
DROP TYPE tradeops_principal;
"""

# The columns of orders.repository.order_view(), and the desk for the desk condition.
ORDERS_AS_SHOWN = """
CREATE VIEW orders_as_shown WITH (security_invoker = true) AS
SELECT orders.id, orders.status, orders.risk_status, orders.risk_reasons,
       clients.external_id AS client_id, desks.code AS desk, instruments.symbol, orders.side,
       orders.order_type, orders.time_in_force, orders.expire_at, orders.quantity,
       orders.price, orders.currency, orders.filled_quantity, orders.avg_fill_price,
       orders.client_order_id, creator.email AS created_by, reviewer.email AS reviewed_by,
       approver.email AS approved_by, orders.approvals_required,
       (SELECT COALESCE(jsonb_agg(jsonb_build_object('approved_by', u.email,
                'approved_at', a.approved_at, 'note', a.note) ORDER BY a.approved_at, u.email),
                '[]')
        FROM order_approvals a JOIN users u ON u.id = a.approved_by
        WHERE a.order_id = orders.id) AS approvals,
       orders.replaces, orders.replaced_by, orders.version, orders.created_at,
       orders.updated_at, orders.desk_id
FROM orders
JOIN clients ON clients.id = orders.client_id
JOIN desks ON desks.id = orders.desk_id
JOIN instruments ON instruments.id = orders.instrument_id
JOIN users AS creator ON creator.id = orders.created_by
LEFT JOIN users AS reviewer ON reviewer.id = orders.reviewed_by
LEFT JOIN users AS approver ON approver.id = orders.approved_by;

GRANT SELECT ON orders_as_shown TO tradeops_app;
"""

# $1/$2 an API key's prefix and hash, or NULL and $3/$4 a person's id and e-mail; $5 the
# application role, $6 the request id, $7 the order. One row when the credentials name a
# principal: `caller`, and `found` (NULL when no such order is visible to it).
READ_ORDER = """
CREATE FUNCTION tradeops_read_order(text, text, bigint, text, text, text, bigint)
RETURNS TABLE (caller tradeops_principal, found orders_as_shown)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    who tradeops_principal;
BEGIN
    SELECT * INTO who FROM tradeops_authenticate($1, $2, $3, $4, $5, $6);
    IF NOT FOUND THEN
        RETURN;  -- no principal: nothing is read
    END IF;
    -- A statement of its own, after the switch: it runs as the application role, with the
    -- principal's context, so row-level security applies to every row it reads.
    RETURN QUERY SELECT who, (SELECT shown FROM orders_as_shown shown
                              WHERE shown.id = $7
                                AND (who.all_desks OR shown.desk_id = ANY(who.desk_ids)));
END $$;

REVOKE ALL ON FUNCTION tradeops_read_order(text, text, bigint, text, text, text, bigint)
    FROM PUBLIC;
"""

DROP_READ_ORDER = """
DROP FUNCTION tradeops_read_order(text, text, bigint, text, text, text, bigint);
DROP VIEW orders_as_shown;
"""

# GET /clients/{id}/portfolio's document, as positions.repository.PORTFOLIO built it until
# now (its SQL moved here whole, so both the transaction's read and the one statement use
# this one): the whole JSON document in one statement, NULL for a client the desks given do
# not cover. PL/pgSQL, so its plan is kept per connection (a SQL function's is made anew on
# every call). Arguments named apart from every column.
PORTFOLIO_DOCUMENT = """
CREATE FUNCTION tradeops_portfolio_document(
    client_external_id text, every_desk boolean, desk_list bigint[]
) RETURNS text LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        WITH client AS (
            SELECT c.id, c.external_id, d.code AS desk
            FROM clients c JOIN desks d ON d.id = c.desk_id
            WHERE c.external_id = client_external_id
              AND (every_desk OR c.desk_id = ANY(desk_list))),
        held AS (
            SELECT i.symbol, i.currency, p.quantity, p.avg_cost, p.cost_basis, p.realized_pnl,
                   s.price AS last_price, s.as_of AS price_as_of,
                   -- A flat position is worth nothing, priced or not.
                   CASE WHEN p.quantity = 0 THEN 0 ELSE p.quantity * s.price END AS market_value
            FROM client JOIN positions p ON p.client_id = client.id
            JOIN instruments i ON i.id = p.instrument_id
            LEFT JOIN LATERAL (
                SELECT m.price, m.as_of FROM market_snapshots m
                WHERE m.instrument_id = p.instrument_id ORDER BY m.as_of DESC, m.id DESC LIMIT 1
            ) s ON true),
        valued AS (SELECT held.*, market_value - cost_basis AS unrealized_pnl FROM held),
        totals AS (
            SELECT currency, count(*) AS positions,
                   count(*) FILTER (WHERE market_value IS NULL) AS unpriced_positions,
                   CASE WHEN bool_and(market_value IS NOT NULL) THEN sum(market_value) END
                       AS market_value,
                   sum(cost_basis) AS cost_basis,
                   CASE WHEN bool_and(unrealized_pnl IS NOT NULL) THEN sum(unrealized_pnl) END
                       AS unrealized_pnl,
                   sum(realized_pnl) AS realized_pnl
            FROM valued GROUP BY currency)
        -- Rows become JSON objects whole (row_to_json), compact like every other response;
        -- the document's own keys are joined as text (a cast of the arrays to json would
        -- parse them again). Amounts are decimal strings without trailing zeros, times UTC.
        SELECT '{"client_id":' || to_json(client.external_id)::text
            || ',"desk":' || to_json(client.desk)::text
            || ',"as_of":'
            || to_json(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text
            || ',"positions":' || COALESCE((
                SELECT '[' || string_agg(row_to_json(shown)::text, ',' ORDER BY shown.symbol)
                    || ']'
                FROM (SELECT symbol, currency, trim_scale(quantity)::text AS quantity,
                             trim_scale(avg_cost)::text AS avg_cost,
                             trim_scale(cost_basis)::text AS cost_basis,
                             last_price IS NOT NULL AS priced,
                             trim_scale(last_price)::text AS last_price,
                             to_char(price_as_of AT TIME ZONE 'UTC',
                                     'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS price_as_of,
                             trim_scale(market_value)::text AS market_value,
                             trim_scale(unrealized_pnl)::text AS unrealized_pnl,
                             trim_scale(realized_pnl)::text AS realized_pnl
                      FROM valued) AS shown), '[]')
            || ',"totals":' || COALESCE((
                SELECT '[' || string_agg(row_to_json(shown)::text, ',' ORDER BY shown.currency)
                    || ']'
                FROM (SELECT currency, positions, unpriced_positions,
                             trim_scale(market_value)::text AS market_value,
                             trim_scale(cost_basis)::text AS cost_basis,
                             trim_scale(unrealized_pnl)::text AS unrealized_pnl,
                             trim_scale(realized_pnl)::text AS realized_pnl
                      FROM totals) AS shown), '[]')
            || '}'
        FROM client
    );
END $$;
"""

# $1..$6 as tradeops_read_order's; $7 the client's external id. One row when the credentials
# name a principal: `caller`, and the portfolio's `document` (NULL when no such client is
# visible to it).
READ_PORTFOLIO = """
CREATE FUNCTION tradeops_read_portfolio(text, text, bigint, text, text, text, text)
RETURNS TABLE (caller tradeops_principal, document text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    who tradeops_principal;
BEGIN
    SELECT * INTO who FROM tradeops_authenticate($1, $2, $3, $4, $5, $6);
    IF NOT FOUND THEN
        RETURN;  -- no principal: nothing is read
    END IF;
    -- After the switch, as tradeops_read_order: row-level security applies.
    RETURN QUERY SELECT who, tradeops_portfolio_document($7, who.all_desks, who.desk_ids);
END $$;

REVOKE ALL ON FUNCTION tradeops_read_portfolio(text, text, bigint, text, text, text, text)
    FROM PUBLIC;
"""

DROP_READ_PORTFOLIO = """
DROP FUNCTION tradeops_read_portfolio(text, text, bigint, text, text, text, text);
DROP FUNCTION tradeops_portfolio_document(text, boolean, bigint[]);
"""


# The latest price of an instrument, ties broken by the later row as every reader orders
# them (ORDER BY as_of DESC, id DESC LIMIT 1): read straight off the index, with no sort per
# instrument (a 500-position portfolio's document: about 6% of its time).
LATEST_PRICE_INDEX = """
CREATE INDEX ix_market_snapshots_latest ON market_snapshots (instrument_id, as_of DESC, id DESC);
DROP INDEX ix_market_snapshots_instrument_id_as_of;
"""

DROP_LATEST_PRICE_INDEX = """
CREATE INDEX ix_market_snapshots_instrument_id_as_of ON market_snapshots (instrument_id, as_of DESC);
DROP INDEX ix_market_snapshots_latest;
"""

# Policy expressions, rewritten in place (qual and with_check as pg_policies deparses them).
_PER_ROW_TO_ONCE: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"tradeops_can_see_desk\(([\w.]+)\)"),
        r"((SELECT tradeops_all_desks()) OR \1 = ANY ((SELECT tradeops_desk_ids())::bigint[]))",
    ),
    (
        re.compile(r"(?<!SELECT )\b(tradeops_(?:user_id|role|api_key_id|actor|all_desks))\(\)"),
        r"(SELECT \1())",
    ),
]
_ONCE_TO_PER_ROW: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\(\s*SELECT (tradeops_\w+)\(\) AS \w+\)"), r"\1()"),
]


def _rewrite_policies(rules: list[tuple[re.Pattern[str], str]]) -> None:
    bind = op.get_bind()
    policies = bind.execute(
        text(
            "SELECT tablename, policyname, qual, with_check FROM pg_policies"
            " WHERE schemaname = current_schema()"
        )
    ).all()

    def rewrite(expression: str) -> str:
        for pattern, replacement in rules:
            expression = pattern.sub(replacement, expression)
        return expression

    for table, name, qual, with_check in policies:
        clauses = []
        if qual is not None and rewrite(qual) != qual:
            clauses.append(f"USING ({rewrite(qual)})")
        if with_check is not None and rewrite(with_check) != with_check:
            clauses.append(f"WITH CHECK ({rewrite(with_check)})")
        if clauses:
            op.execute(f'ALTER POLICY "{name}" ON "{table}" {" ".join(clauses)}')


def upgrade() -> None:
    op.execute(AUTHENTICATE)
    op.execute(ORDERS_AS_SHOWN)
    op.execute(READ_ORDER)
    op.execute(PORTFOLIO_DOCUMENT)
    op.execute(READ_PORTFOLIO)
    _rewrite_policies(_PER_ROW_TO_ONCE)
    op.execute(LATEST_PRICE_INDEX)


def downgrade() -> None:
    op.execute(DROP_LATEST_PRICE_INDEX)
    _rewrite_policies(_ONCE_TO_PER_ROW)
    op.execute(DROP_READ_PORTFOLIO)
    op.execute(DROP_READ_ORDER)
    op.execute(DROP_AUTHENTICATE)
