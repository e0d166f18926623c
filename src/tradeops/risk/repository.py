"""The risk module's SQL: limits, the facts a check reads, and the one-statement result."""

from __future__ import annotations

from sqlalchemy import text

LIMITS = (
    "SELECT d.code AS desk, c.external_id AS client_id, r.max_order_notional, r.max_position,"
    " r.fat_finger_pct, r.updated_by, r.updated_at"
    " FROM risk_limits r JOIN desks d ON d.id = r.desk_id"
    " LEFT JOIN clients c ON c.id = r.client_id"
)
LIST_LIMITS = text(
    LIMITS + " WHERE (CAST(:desk AS text) IS NULL OR d.code = :desk)"
    " AND (CAST(:client_id AS text) IS NULL OR c.external_id = :client_id)"
    " ORDER BY d.code, c.external_id NULLS FIRST"
)
LIMIT_BY_ID = text(LIMITS + " WHERE r.id = :id")
DESK_BY_CODE = text("SELECT id AS desk_id, NULL::bigint AS client_id FROM desks WHERE code = :code")
CLIENT_BY_EXTERNAL_ID = text(
    "SELECT desk_id, id AS client_id FROM clients WHERE external_id = :external_id"
)
CURRENT_LIMIT = text(
    "SELECT * FROM risk_limits WHERE desk_id = :desk_id"
    " AND client_id IS NOT DISTINCT FROM CAST(:client_id AS bigint) FOR UPDATE"
)
SET_LIMIT = text(
    "INSERT INTO risk_limits (desk_id, client_id, max_order_notional, max_position,"
    " fat_finger_pct, updated_by)"
    " VALUES (:desk_id, :client_id, :max_order_notional, :max_position, :fat_finger_pct,"
    "  :updated_by)"
    " ON CONFLICT (desk_id, client_id) DO UPDATE SET"
    " max_order_notional = EXCLUDED.max_order_notional, max_position = EXCLUDED.max_position,"
    " fat_finger_pct = EXCLUDED.fat_finger_pct, updated_by = EXCLUDED.updated_by,"
    " updated_at = now()"
    " RETURNING *"
)

# Everything the rules need about one order, the order row locked so the result is written
# against the version that was checked.
RISK_FACTS = text(
    "SELECT o.id, o.status, o.risk_status, o.version, o.side, o.quantity, o.price, o.currency,"
    " i.symbol, i.restricted,"
    " (SELECT m.price FROM market_snapshots m WHERE m.instrument_id = o.instrument_id"
    "  ORDER BY m.as_of DESC, m.id DESC LIMIT 1) AS last_price,"
    " COALESCE(p.quantity, 0) AS position,"
    # Approved orders not yet filled will move the position too: count their open quantity.
    " (SELECT COALESCE(sum(CASE w.side WHEN 'BUY' THEN 1 ELSE -1 END"
    "   * (w.quantity - w.filled_quantity)), 0) FROM orders w"
    "  WHERE w.client_id = o.client_id AND w.instrument_id = o.instrument_id"
    "  AND w.status IN ('APPROVED', 'PARTIALLY_FILLED') AND w.id <> o.id) AS working,"
    " d.max_order_notional AS desk_max_order_notional, d.max_position AS desk_max_position,"
    " d.fat_finger_pct AS desk_fat_finger_pct,"
    " c.max_order_notional AS client_max_order_notional, c.max_position AS client_max_position,"
    " c.fat_finger_pct AS client_fat_finger_pct"
    " FROM orders o JOIN instruments i ON i.id = o.instrument_id"
    " LEFT JOIN risk_limits d ON d.desk_id = o.desk_id AND d.client_id IS NULL"
    " LEFT JOIN risk_limits c ON c.client_id = o.client_id"
    " LEFT JOIN positions p ON p.client_id = o.client_id AND p.instrument_id = o.instrument_id"
    " WHERE o.id = :id FOR UPDATE OF o"
)

# The check's outcome, its order event and its audit event, in one statement; only while
# the order still awaits its check, so a rerun changes nothing.
RECORD_RESULT = text(
    "WITH before AS (SELECT * FROM orders WHERE id = :id),"
    " changed AS ("
    " UPDATE orders SET risk_status = :risk_status, risk_reasons = CAST(:reasons AS jsonb),"
    "  version = version + 1, updated_at = now()"
    " WHERE id = :id AND risk_status = 'PENDING' RETURNING *),"
    " event AS ("
    " INSERT INTO order_events (order_id, desk_id, seq, type, actor, payload)"
    " SELECT id, desk_id, version, :event_type, :actor, CAST(:payload AS jsonb) FROM changed),"
    " audit AS ("
    " INSERT INTO audit_events (stream, actor, request_id, action, entity, entity_id,"
    "  before, after)"
    " SELECT 'order:' || c.id, :actor, :request_id, :action, 'order', c.id::text,"
    "  to_jsonb(b), to_jsonb(c) FROM changed c CROSS JOIN before b)"
    " SELECT id, version FROM changed"
)

# Orders still awaiting their check a while after they were submitted, oldest first (the
# open statuses only: check_order skips every other). Reads through row-level security as
# the caller, so a sweep run as the system sees every desk. ix_orders_status_id serves it.
AWAITING_CHECK = text(
    "SELECT id FROM orders WHERE status IN ('PENDING', 'REVIEWED') AND risk_status = 'PENDING'"
    " AND created_at < now() - make_interval(secs => :older_than_seconds)"
    " ORDER BY id LIMIT :limit"
)
