"""POST /orders with an Idempotency-Key in one statement

Revision ID: 0038
Revises: 0037
Create Date: 2026-11-29

Issue 15: "a write needs at most two" round trips. A new order sent with an Idempotency-Key
(how an agent makes its retries safe) took six: BEGIN, authenticate, the key reserved, the
order, the response stored, COMMIT. `tradeops_submit_order_once` takes one. In order:

- it authenticates with the function every request's first statement calls (which switches
  to the application role and publishes the caller's context, transaction-local) and, as
  tradeops_submit_order (0025), answers only the caller for one who may not submit orders;
- it reserves the key as idempotency.repository.RESERVE does: under row-level security, for
  the context's principal, waiting for a request that holds the key to end. A key already
  taken by the same request (the same fingerprint) answers the response stored with it, a
  replay; any other taken key answers nothing, and the application's transaction refuses it
  (422) as documented;
- it records the order with tradeops_record_order (0028: intake's statement, whose
  wake-ups the application sends after the commit), and stores the response: 201, the
  order's document as GET /orders/{id} writes it (tradeops_order_document, which POST's
  answer equals byte for byte), its ETag and its Location under `in_location`;
- an order intake did not record (a retry under its client_order_id, a refusal) raises
  SQLSTATE TO001: the key's reservation is undone with the statement, and the application
  runs the request again in its transaction, which explains it.

The statement is its own transaction: the key, the order and the stored response commit
together or not at all, as in the transaction they replace.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0038"
down_revision: str | None = "0037"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SUBMIT_ORDER_ONCE = (
    "tradeops_submit_order_once(text, text, bigint, text, text, text, text[], text, integer,"
    " text, text, text, text, text, timestamptz, numeric, numeric, text, text, text, text,"
    " text, text, text, text, text)"
)
FUNCTION = f"""
-- tradeops_submit_order's arguments (0025), then the key, the request's fingerprint
-- (idempotency.service.fingerprint) and the path a new order's Location is under. One row
-- when the credentials name a principal: `caller`, and the response to send (all NULL when
-- the caller may not submit orders, or the key was taken by another request).
CREATE FUNCTION tradeops_submit_order_once(
    in_prefix text, in_hash text, in_user_id bigint, in_email text, in_app_role text,
    in_request_id text, in_roles text[], in_scope text, in_lock_timeout_ms integer,
    in_client_id text, in_symbol text, in_side text, in_order_type text,
    in_time_in_force text, in_expire_at timestamptz, in_quantity numeric, in_price numeric,
    in_client_order_id text, in_event_type text, in_payload text, in_action text,
    in_risk_queue text, in_risk_task text, in_key text, in_fingerprint text, in_location text
) RETURNS TABLE (
    caller tradeops_principal, submitted tradeops_order_submitted, status integer,
    body bytea, headers jsonb, replayed boolean
)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    who tradeops_principal;
    made tradeops_order_submitted;
    stored idempotency_keys%ROWTYPE;
    shown text;
BEGIN
    SELECT * INTO who FROM tradeops_authenticate(
        in_prefix, in_hash, in_user_id, in_email, in_app_role, in_request_id);
    IF NOT FOUND THEN
        RETURN;  -- no principal: nothing is written
    END IF;
    IF NOT (who.role = ANY(in_roles) AND (who.scopes IS NULL OR in_scope = ANY(who.scopes)))
    THEN
        RETURN QUERY SELECT who, NULL::tradeops_order_submitted, NULL::integer, NULL::bytea,
            NULL::jsonb, NULL::boolean;  -- may not: nothing written
        RETURN;
    END IF;
    -- Sent alone, the statement has no BEGIN to carry its time limit: waiting for a lock
    -- (the key a concurrent request holds, the usual one) ends here, in the server, past
    -- in_lock_timeout_ms, with nothing written.
    PERFORM set_config('lock_timeout', in_lock_timeout_ms::text, true);
    INSERT INTO idempotency_keys (principal, key, fingerprint)
    VALUES (tradeops_actor(), in_key, in_fingerprint)
    ON CONFLICT (principal, key) DO NOTHING;
    IF NOT FOUND THEN
        -- Taken, by a request that has committed (the insert waited for it): a statement of
        -- its own, so it sees that request's row.
        SELECT * INTO stored FROM idempotency_keys
        WHERE principal = tradeops_actor() AND key = in_key;
        IF FOUND AND stored.fingerprint = in_fingerprint THEN
            RETURN QUERY SELECT who, NULL::tradeops_order_submitted, stored.response_status,
                stored.response_body, stored.response_headers, true;
        ELSE  -- another request's key: the transaction refuses it
            RETURN QUERY SELECT who, NULL::tradeops_order_submitted, NULL::integer,
                NULL::bytea, NULL::jsonb, NULL::boolean;
        END IF;
        RETURN;
    END IF;
    SELECT * INTO made FROM tradeops_record_order(
        in_client_id, in_symbol, in_side, in_order_type, in_time_in_force, in_expire_at,
        in_quantity, in_price, in_client_order_id, who.user_id, who.key_id, who.all_desks,
        who.desk_ids, in_event_type, in_payload, in_action, in_risk_queue, in_risk_task);
    IF made.id IS NULL THEN  -- nothing recorded: undo the key, the transaction explains
        RAISE EXCEPTION 'intake recorded no order; the transaction explains it'
            USING ERRCODE = 'TO001';
    END IF;
    SELECT d.document INTO shown
    FROM tradeops_order_document(made.id, who.all_desks, who.desk_ids) AS d;
    IF shown IS NULL THEN  -- never: the maker sees the order intake just recorded
        RAISE EXCEPTION 'order % was recorded but cannot be read back', made.id;
    END IF;
    UPDATE idempotency_keys SET response_status = 201,
        response_body = convert_to(shown, 'UTF8'),
        response_headers = jsonb_build_object(
            'ETag', '"' || made.version || '"', 'Location', in_location || '/' || made.id)
    WHERE principal = tradeops_actor() AND key = in_key
    RETURNING * INTO stored;
    RETURN QUERY SELECT who, made, stored.response_status, stored.response_body,
        stored.response_headers, false;
END $$;

REVOKE ALL ON FUNCTION {SUBMIT_ORDER_ONCE} FROM PUBLIC;
"""  # noqa: S608 - SQL from this code only


def upgrade() -> None:
    op.execute(FUNCTION)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SUBMIT_ORDER_ONCE}")
