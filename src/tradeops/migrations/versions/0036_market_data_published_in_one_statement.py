"""POST /market-data/snapshots in one statement

Revision ID: 0036
Revises: 0035
Create Date: 2026-11-29

Issue 15: "a write needs at most two" round trips. A batch of prices took five: BEGIN,
authenticate, the batch (marketdata.repository's PUBLISH: every snapshot in one statement,
or none if a symbol is unknown), its audit event, COMMIT. A price feed publishes all day, so
`tradeops_publish_snapshots` does it in one, as tradeops_submit_order (0025) does intake:

- it authenticates with the function every request's first statement calls (which switches
  to the application role and publishes the caller's context, transaction-local);
- it refuses a caller whose role may not publish, or whose key lacks `marketdata:write`
  (the roles and scopes it is given, from auth.permissions): nothing is written;
- it runs PUBLISH after the switch, under row-level security (only admin and the system may
  insert prices), its waits for another batch's locks bounded by in_lock_timeout_ms;
- when it stored anything, it appends the batch's audit event: what the application says of
  the batch (received, sources, the as_of range: in_after) with the counts only PUBLISH knows
  (stored, duplicates), as marketdata.service.publish records it in a transaction.

Unknown symbols store nothing, as before: the statement answers their positions and the
application refuses the batch with the same 422. Sent alone, the statement is its own
transaction: the context dies with it, on a pooled or PgBouncer'd connection alike.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0036"
down_revision: str | None = "0035"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What marketdata.repository.publish_function() writes at this revision;
# tests/integration/test_one_statement_publish.py holds the installed function equal to it.
PUBLISH = (
    "WITH input AS ( SELECT * FROM unnest(CAST(in_symbols AS text[]), CAST(in_prices AS "
    "numeric[]),  CAST(in_bids AS numeric[]), CAST(in_asks AS numeric[]), CAST(in_as_ofs "
    "AS timestamptz[]),  CAST(in_sources AS text[]))  WITH ORDINALITY AS t(symbol, "
    "price, bid, ask, as_of, source, n)), resolved AS ( SELECT input.*, i.id AS "
    "instrument_id FROM input LEFT JOIN instruments i ON i.symbol = input.symbol), "
    "unknown AS (SELECT n FROM resolved WHERE instrument_id IS NULL), stored AS ( INSERT "
    "INTO market_snapshots (instrument_id, price, bid, ask, as_of, source) SELECT "
    "instrument_id, price, bid, ask, as_of, source FROM resolved WHERE NOT EXISTS "
    "(SELECT FROM unknown) ORDER BY instrument_id, as_of, source ON CONFLICT "
    "(instrument_id, as_of, source) DO NOTHING RETURNING 1) SELECT (SELECT count(*) FROM "
    "stored) AS stored,  (SELECT array_agg(n ORDER BY n) FROM unknown) AS unknown INTO "
    "n_stored, at_unknown"
)
PUBLISHED_AUDIT = (
    "INSERT INTO audit_events (stream, action, entity, entity_id, before, after) SELECT "
    "'market_data' || ':' || in_entity_id, 'market_data.published', 'market_data', "
    "in_entity_id, NULL, CAST(in_after AS jsonb) || jsonb_build_object('stored', "
    "n_stored, 'duplicates', cardinality(in_symbols) - n_stored)"
)

PUBLISH_SNAPSHOTS = (
    "tradeops_publish_snapshots(text, text, bigint, text, text, text, text[], text[], integer,"
    " text[], numeric[], numeric[], numeric[], timestamptz[], text[], text, text)"
)
FUNCTION = """
-- in_prefix .. in_request_id as tradeops_submit_order's; in_roles and in_scopes: who may
-- publish (a role among them; a key with every one of the scopes); in_lock_timeout_ms: the
-- longest wait for a lock. Then the batch as PUBLISH takes it, the audit event's entity id
-- (the sources) and what it says of the batch. One row when the credentials name a
-- principal: `caller`, and PUBLISH's row (snapshots_stored NULL when the caller may not
-- publish: nothing written).
CREATE FUNCTION tradeops_publish_snapshots(
    in_prefix text, in_hash text, in_user_id bigint, in_email text, in_app_role text,
    in_request_id text, in_roles text[], in_scopes text[], in_lock_timeout_ms integer,
    in_symbols text[], in_prices numeric[], in_bids numeric[], in_asks numeric[],
    in_as_ofs timestamptz[], in_sources text[], in_entity_id text, in_after text
) RETURNS TABLE (caller tradeops_principal, snapshots_stored bigint, unknown_positions bigint[])
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    who tradeops_principal;
    n_stored bigint;
    at_unknown bigint[];
BEGIN
    SELECT * INTO who FROM tradeops_authenticate(
        in_prefix, in_hash, in_user_id, in_email, in_app_role, in_request_id);
    IF NOT FOUND THEN
        RETURN;  -- no principal: nothing is written
    END IF;
    IF NOT (who.role = ANY(in_roles) AND (who.scopes IS NULL OR in_scopes <@ who.scopes))
    THEN
        RETURN QUERY SELECT who, NULL::bigint, NULL::bigint[];  -- may not: nothing written
        RETURN;
    END IF;
    -- Sent alone, the statement has no BEGIN to carry its time limit: waiting for an
    -- overlapping batch's locks ends here, in the server, with nothing written.
    PERFORM set_config('lock_timeout', in_lock_timeout_ms::text, true);
    -- Statements of their own, after the switch: row-level security applies to both.
    {publish};
    IF n_stored > 0 AND at_unknown IS NULL THEN
        {audit};
    END IF;
    RETURN QUERY SELECT who, n_stored, at_unknown;
END $$;
"""


def upgrade() -> None:
    op.execute(FUNCTION.replace("{publish}", PUBLISH).replace("{audit}", PUBLISHED_AUDIT))
    op.execute(f"REVOKE ALL ON FUNCTION {PUBLISH_SNAPSHOTS} FROM PUBLIC")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {PUBLISH_SNAPSHOTS}")
