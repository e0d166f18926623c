"""Named queries over executions."""

from __future__ import annotations

from sqlalchemy import text

from tradeops.db.prepared import prepare

# The order to fill, locked first: fills of one order queue here, and everything after
# (the resent-fill check, the position) is read under this lock.
LOCK_ORDER = prepare(
    text(
        "SELECT o.id, o.desk_id, o.client_id, o.instrument_id, o.side, o.order_type,"
        " o.price AS limit_price, o.quantity, o.filled_quantity, o.avg_fill_price, o.status,"
        " o.version,"
        " c.external_id AS client_external_id, i.symbol, i.lot_size"
        " FROM orders o JOIN clients c ON c.id = o.client_id"
        " JOIN instruments i ON i.id = o.instrument_id"
        " WHERE o.id = :id FOR UPDATE OF o"
    )
)

_EXECUTION_COLUMNS = (
    "e.id, e.order_id, e.external_id, e.quantity, e.price, e.venue, e.executed_at,"
    " u.email AS recorded_by, e.recorded_at"
)

# Read after the lock (a new statement, so it sees every fill committed before it): the
# execution already recorded under this external id, if any, and what the order's fills
# cost so far, for its average fill price.
FILL_CONTEXT = prepare(
    text(
        "SELECT (SELECT COALESCE(sum(quantity * price), 0) FROM executions"  # noqa: S608 - constants only
        "  WHERE order_id = :order_id) AS filled_notional,"
        f" {_EXECUTION_COLUMNS}"
        " FROM (SELECT 1) AS one"
        " LEFT JOIN executions e ON e.venue = :venue AND e.external_id = :external_id"
        " LEFT JOIN users u ON u.id = e.recorded_by"
    )
)

# The fill, the order's new state, its history event (seq = the new version) and the audit
# events of both, in one round trip. A fill whose external id a concurrent fill of another
# order took meanwhile inserts nothing, changes nothing and returns no row.
RECORD_FILL = prepare(
    text(
        "WITH new_execution AS ("  # noqa: S608 - SQL from constants only
        " INSERT INTO executions (order_id, desk_id, quantity, price, venue, executed_at,"
        "  external_id, recorded_by, recorded_by_key_id)"
        " VALUES (:order_id, :desk_id, :quantity, :price, :venue, :executed_at, :external_id,"
        "  :recorded_by, :recorded_by_key_id)"
        " ON CONFLICT (venue, external_id) DO NOTHING RETURNING *),"
        " before AS (SELECT * FROM orders WHERE id = :order_id),"
        " changed AS ("
        " UPDATE orders SET filled_quantity = filled_quantity + :quantity,"
        "  avg_fill_price = :avg_fill_price, status = :to_status, version = version + 1,"
        "  updated_at = now()"
        " WHERE id = :order_id AND version = :version AND EXISTS (SELECT FROM new_execution)"
        " RETURNING *),"
        " event AS ("
        " INSERT INTO order_events (order_id, desk_id, seq, type, actor, payload)"
        " SELECT c.id, c.desk_id, c.version, c.status, :actor,"
        "  CAST(:payload AS jsonb) || jsonb_build_object('execution_id', e.id)"
        " FROM changed c CROSS JOIN new_execution e),"
        " audit_execution AS ("
        " INSERT INTO audit_events (stream, actor, api_key_id, request_id, action, entity,"
        "  entity_id, after)"
        " SELECT 'execution:' || e.id, :actor, :api_key_id, :request_id, 'execution.recorded',"
        "  'execution', e.id::text, to_jsonb(e) FROM new_execution e),"
        " audit_order AS ("
        " INSERT INTO audit_events (stream, actor, api_key_id, request_id, action, entity,"
        "  entity_id, before, after)"
        " SELECT 'order:' || c.id, :actor, :api_key_id, :request_id, :action, 'order',"
        "  c.id::text, to_jsonb(b), to_jsonb(c) FROM changed c CROSS JOIN before b)"
        f" SELECT {_EXECUTION_COLUMNS}, c.status AS order_status,"
        " c.filled_quantity AS order_filled_quantity, c.avg_fill_price AS order_avg_fill_price,"
        " c.version AS order_version"
        " FROM new_execution e JOIN changed c ON c.id = e.order_id"
        " JOIN users u ON u.id = e.recorded_by"
    )
)

EXECUTIONS_OF_ORDER = prepare(
    text(
        f"SELECT {_EXECUTION_COLUMNS} FROM executions e"  # noqa: S608 - constants only
        " JOIN users u ON u.id = e.recorded_by"
        " WHERE e.order_id = :order_id ORDER BY e.executed_at, e.id"
    )
)
