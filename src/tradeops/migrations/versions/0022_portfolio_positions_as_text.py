"""a portfolio's positions written as text

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-27

Issue 15: GET /clients/{id}/portfolio (500 positions) spends most of its time in PostgreSQL,
and most of that in `tradeops_portfolio_document` (0019). The document is the same, byte for
byte; it is cheaper to write:

- A position's JSON object is joined as text, its keys constants, instead of `row_to_json`
  of a row of eleven columns, which looks up each column's type and output function and
  escapes every value, for every row. Only the symbol and the currency can hold a character
  JSON escapes, and they still go through `to_json`; the amounts are trim_scale'd numerics
  and the time a fixed to_char format, which need no escaping. A priced position has a
  price, its time, a market value and an unrealized P&L; an unpriced one no price and no
  time: one CASE writes each kind, with no COALESCE per field.
- A currency's unrealized P&L is its market value less its cost basis, summed: the same
  exact numeric (a sum has the largest scale of its terms, as the sum of the differences
  has), one sum fewer.

Measured as the application role on the bench's book (bench/run.py BENCH_BOOK: 500
positions, a 120 KB document), this function against 0019's, interleaved (12 rounds in
random order, each on a fresh connection), on a shared PostgreSQL 15 with other work on its
two cores, CPU time of the backend (/proc/<pid>/schedstat): the document alone, 100 in one
statement, median 3.43 -> 2.74 ms (each round's ratio to 0019's, median: 0.79); the whole
`tradeops_read_portfolio` (authentication, the document, sending it), 300 calls in a row,
4.14 -> 3.56 ms (0.85). Writing each field out (and the one sum fewer) was about 0.89 of
0019's alone, the CASE took it to 0.79; `to_json` for the symbol and the currency costs about 0.04 of 0019's more than quoting
them, which their CHECKs would allow, but a relaxed CHECK would then break the JSON silently.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# `\:` where a colon comes before a word: op.execute's text() would take `:false` for a
# parameter.
PORTFOLIO_DOCUMENT = """
CREATE OR REPLACE FUNCTION tradeops_portfolio_document(
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
                   -- The sum of the differences, exactly (and at the same scale).
                   CASE WHEN bool_and(market_value IS NOT NULL)
                        THEN sum(market_value) - sum(cost_basis) END AS unrealized_pnl,
                   sum(realized_pnl) AS realized_pnl
            FROM valued GROUP BY currency)
        -- Compact JSON, its keys in this order, joined as text. Amounts are decimal strings
        -- without trailing zeros, times UTC. A position's text is written out (as
        -- row_to_json would write it); a priced one has every amount, an unpriced one no
        -- price and no time. Nothing here is NULL but what the COALESCEs name: every other
        -- column is NOT NULL.
        SELECT '{"client_id":' || to_json(client.external_id)::text
            || ',"desk":' || to_json(client.desk)::text
            || ',"as_of":'
            || to_json(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text
            || ',"positions":' || COALESCE((
                SELECT '[' || string_agg(
                    '{"symbol":' || to_json(symbol)::text
                    || ',"currency":' || to_json(currency)::text
                    || ',"quantity":"' || trim_scale(quantity)::text
                    || '","avg_cost":' || COALESCE('"' || trim_scale(avg_cost)::text || '"', 'null')
                    || ',"cost_basis":"' || trim_scale(cost_basis)::text
                    || CASE WHEN last_price IS NULL THEN
                            '","priced"\\:false,"last_price"\\:null,"price_as_of"\\:null,"market_value":'
                            || COALESCE('"' || trim_scale(market_value)::text || '"', 'null')
                            || ',"unrealized_pnl":'
                            || COALESCE('"' || trim_scale(unrealized_pnl)::text || '"', 'null')
                            || ',"realized_pnl":"'
                       ELSE '","priced"\\:true,"last_price":"' || trim_scale(last_price)::text
                            || '","price_as_of":"'
                            || to_char(price_as_of AT TIME ZONE 'UTC',
                                       'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
                            || '","market_value":"' || trim_scale(market_value)::text
                            || '","unrealized_pnl":"' || trim_scale(unrealized_pnl)::text
                            || '","realized_pnl":"' END
                    || trim_scale(realized_pnl)::text || '"}', ',' ORDER BY symbol)
                    || ']'
                FROM valued), '[]')
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

# As 0019 wrote it.
PORTFOLIO_DOCUMENT_0019 = """
CREATE OR REPLACE FUNCTION tradeops_portfolio_document(
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


def upgrade() -> None:
    op.execute(PORTFOLIO_DOCUMENT)


def downgrade() -> None:
    op.execute(PORTFOLIO_DOCUMENT_0019)
