"""GET /orders (the list) in one statement

Revision ID: 0041
Revises: 0040
Create Date: 2026-11-29

Issue 15: "a read needs one" round trip. A page of orders took four (BEGIN, authenticate,
the page, COMMIT), five with a client, symbol or desk filter (their ids looked up first).
`tradeops_read_order_page` reads it in one, as tradeops_read_order (0019) reads one order: it
authenticates with the function every request's first statement calls (which switches to
the application role and publishes the caller's context, transaction-local), and only for a
principal found reads the page as that role, under row-level security and the caller's desk
condition.

The page is `tradeops_order_page`, which does what orders.repository.filtered_orders and
orders.service.list_filter_keys do, in the same order:

- a client, symbol or desk filter becomes its row's id first (a client under row-level
  security, so another desk's is not found; a desk the caller does not see is no desk), and
  one that names nothing answers an empty page without reading an order;
- the page's ids are then read from orders alone, newest first by id, or with a created
  range by (created_at, id), after the cursor's key: every condition is on orders' own
  columns, so one of its (…, id) indexes serves it. The filters a request names decide the
  statement's text, as they decided the application's: `tradeops_order_page_statement`
  writes it from constant fragments (its values are parameters), and it is planned for the
  values it is given, a plan of one table (tests/integration/test_order_list_at_scale.py
  EXPLAINs it for every filter, as it does the application's);
- each order on the page is written as GET /orders/{id} writes it
  (`tradeops_order_document`, 0035), joined as the page's `items`, the same bytes as the
  list's OrderOut.

It is STABLE, so both of its reads see the snapshot of the statement that calls it: an
order changed between them cannot show under a filter it no longer meets. One more row than
the page is read, to say whether there is a next page; the last order's id and creation time
are answered for its cursor, which the application writes (pagination.encode_cursor).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0041"
down_revision: str | None = "0040"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILTERS = (
    "in_status text, in_risk_status text, in_client_id text, in_symbol text, in_side text,"
    " in_client_order_id text, in_desk text, in_created_from timestamptz,"
    " in_created_to timestamptz, in_after_created timestamptz, in_after_id bigint,"
    " in_limit integer"
)
FILTER_TYPES = (
    "text, text, text, text, text, text, text, timestamptz, timestamptz, timestamptz, bigint,"
    " integer"
)
ORDER_PAGE = f"tradeops_order_page(boolean, bigint[], {FILTER_TYPES})"
PAGE_STATEMENT = (
    "tradeops_order_page_statement(every_desk boolean, client_key bigint,"
    " instrument_key bigint, desk_key bigint, in_status text, in_risk_status text,"
    " in_side text, in_client_order_id text, in_created_from timestamptz,"
    " in_created_to timestamptz, in_after_id bigint)"
)
READ_ORDER_PAGE = f"tradeops_read_order_page(text, text, bigint, text, text, text, {FILTER_TYPES})"

FUNCTIONS = f"""
-- The text of a page's statement: the ids of the page and one more, newest first, of the
-- orders that meet the filters given (a NULL argument is a filter not given). Constant
-- fragments only, chosen by which filters are given; the values are its parameters: $1 the
-- caller's desks, $2 to $4 the client's, instrument's and desk's ids, $5 to $10 the status,
-- risk status, side, client_order_id and created range, $11 and $12 the cursor's key, $13
-- the page's size.
CREATE FUNCTION {PAGE_STATEMENT}
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'SELECT array(SELECT o.id FROM orders o WHERE true'
        || CASE WHEN every_desk THEN '' ELSE ' AND o.desk_id = ANY($1)' END
        || CASE WHEN client_key IS NULL THEN '' ELSE ' AND o.client_id = $2' END
        || CASE WHEN instrument_key IS NULL THEN '' ELSE ' AND o.instrument_id = $3' END
        || CASE WHEN desk_key IS NULL THEN '' ELSE ' AND o.desk_id = $4' END
        || CASE WHEN in_status IS NULL THEN '' ELSE ' AND o.status = $5' END
        || CASE WHEN in_risk_status IS NULL THEN '' ELSE ' AND o.risk_status = $6' END
        || CASE WHEN in_side IS NULL THEN '' ELSE ' AND o.side = $7' END
        || CASE WHEN in_client_order_id IS NULL THEN '' ELSE ' AND o.client_order_id = $8' END
        || CASE WHEN in_created_from IS NULL THEN '' ELSE ' AND o.created_at >= $9' END
        || CASE WHEN in_created_to IS NULL THEN '' ELSE ' AND o.created_at < $10' END
        || CASE WHEN in_after_id IS NULL THEN ''
                WHEN by_created THEN ' AND (o.created_at, o.id) < ($11, $12)'
                ELSE ' AND o.id < $12' END
        || CASE WHEN by_created THEN ' ORDER BY o.created_at DESC, o.id DESC'
                ELSE ' ORDER BY o.id DESC' END
        || ' LIMIT $13 + 1)'
    FROM (SELECT in_created_from IS NOT NULL OR in_created_to IS NOT NULL AS by_created) AS list
$$;

-- The page of orders as the application role reads it, for a caller on every desk or on
-- desk_list; NULL filters are not filtered on. `items` is the JSON array of the page's
-- orders; `more` whether another page follows, and then the last order's id and creation
-- time, for the cursor.
CREATE FUNCTION tradeops_order_page(every_desk boolean, desk_list bigint[], {FILTERS})
RETURNS TABLE (items text, more boolean, last_id bigint, last_created_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    client_key bigint;
    instrument_key bigint;
    desk_key bigint;
    page bigint[] := '{{}}';
BEGIN
    IF in_client_id IS NOT NULL THEN
        SELECT c.id INTO client_key FROM clients c WHERE c.external_id = in_client_id;
    END IF;
    IF in_symbol IS NOT NULL THEN
        SELECT i.id INTO instrument_key FROM instruments i WHERE i.symbol = in_symbol;
    END IF;
    IF in_desk IS NOT NULL THEN
        SELECT d.id INTO desk_key FROM desks d
        WHERE d.code = in_desk AND (every_desk OR d.id = ANY(desk_list));
    END IF;
    IF (in_client_id IS NULL OR client_key IS NOT NULL)
       AND (in_symbol IS NULL OR instrument_key IS NOT NULL)
       AND (in_desk IS NULL OR desk_key IS NOT NULL) THEN
        EXECUTE tradeops_order_page_statement(
            every_desk, client_key, instrument_key, desk_key, in_status, in_risk_status,
            in_side, in_client_order_id, in_created_from, in_created_to, in_after_id)
        INTO page
        USING desk_list, client_key, instrument_key, desk_key, in_status, in_risk_status,
              in_side, in_client_order_id, in_created_from, in_created_to, in_after_created,
              in_after_id, in_limit;
    END IF;
    RETURN QUERY SELECT COALESCE('[' || string_agg(d.document, ',' ORDER BY p.n) || ']', '[]'),
        cardinality(page) > in_limit,
        CASE WHEN cardinality(page) > in_limit THEN page[in_limit] END,
        CASE WHEN cardinality(page) > in_limit THEN
            (SELECT o.created_at FROM orders o WHERE o.id = page[in_limit]) END
    FROM unnest(page[1 : in_limit]) WITH ORDINALITY AS p(id, n)
    CROSS JOIN LATERAL tradeops_order_document(p.id, every_desk, desk_list) AS d;
END $$;

-- $1/$2 an API key's prefix and hash, or NULL and $3/$4 a person's id and e-mail; $5 the
-- application role, $6 the request id; then tradeops_order_page's filters. One row when the
-- credentials name a principal: `caller`, and the page.
CREATE FUNCTION tradeops_read_order_page(
    in_prefix text, in_hash text, in_user_id bigint, in_email text, in_app_role text,
    in_request_id text, {FILTERS}
) RETURNS TABLE (caller tradeops_principal, items text, more boolean, last_id bigint,
                 last_created_at timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    who tradeops_principal;
BEGIN
    SELECT * INTO who FROM tradeops_authenticate(
        in_prefix, in_hash, in_user_id, in_email, in_app_role, in_request_id);
    IF NOT FOUND THEN
        RETURN;  -- no principal: nothing is read
    END IF;
    -- A statement of its own, after the switch: row-level security applies to every row.
    RETURN QUERY SELECT who, page.* FROM tradeops_order_page(
        who.all_desks, who.desk_ids, in_status, in_risk_status, in_client_id, in_symbol,
        in_side, in_client_order_id, in_desk, in_created_from, in_created_to,
        in_after_created, in_after_id, in_limit) AS page;
END $$;

REVOKE ALL ON FUNCTION {READ_ORDER_PAGE} FROM PUBLIC;
"""  # noqa: S608 - SQL from this code only


def upgrade() -> None:
    op.execute(FUNCTIONS)


def downgrade() -> None:
    op.execute(
        f"DROP FUNCTION {READ_ORDER_PAGE}; DROP FUNCTION {ORDER_PAGE};"
        f" DROP FUNCTION {PAGE_STATEMENT}"
    )
