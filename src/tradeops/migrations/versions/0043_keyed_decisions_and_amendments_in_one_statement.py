"""Decisions and amendments sent with an Idempotency-Key in one statement

Revision ID: 0043
Revises: 0042
Create Date: 2026-11-29

Issue 15: "a write needs at most two" round trips. A review, approval, rejection or
cancellation sent with an Idempotency-Key (how an agent makes its retries safe) took five or
six round trips (BEGIN, authenticate, the key reserved, the order locked, the transition,
the response stored, COMMIT), an amendment five or more. `tradeops_decide_order_once` and
`tradeops_amend_order_once` take one each, as tradeops_submit_order_once (0038) does for a
new order:

- they authenticate with the function every request's first statement calls (which switches
  to the application role and publishes the caller's context, transaction-local), and
  reserve the key for the context's principal (`tradeops_reserve_key`, waiting for a request
  that holds it). A key taken by the same request (its fingerprint) answers the response
  stored with it, a replay; any other taken key answers nothing, and the application's
  transaction refuses it (422) as documented;
- they make the decision or the amendment with the function that makes it without a key
  (tradeops_decide_order, 0035; tradeops_amend_order, 0040: the same rules, the same
  writes; each authenticates again, the same principal and context), and store the response
  under the key (`tradeops_store_response`): the order's document as GET /orders/{id}
  writes it (the bytes the transaction stores), its ETag, and for an amendment 201 and the
  new order's Location;
- a decision or an amendment that function does not make (a caller who may not, a rule that
  refuses, another version) raises SQLSTATE TO001: the key's reservation is undone with the
  statement, and the application runs the request again in its transaction, which explains
  it and keeps the key as it always did.

The statement is its own transaction: the key, the change and the stored response commit
together or not at all, as in the transaction they replace.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0043"
down_revision: str | None = "0042"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RESERVE_KEY = "tradeops_reserve_key(text, text)"
STORE_RESPONSE = "tradeops_store_response(text, integer, text, jsonb)"
DECIDE_ONCE = (
    "tradeops_decide_order_once(text, text, bigint, text, text, text, text[], text[], integer,"
    " bigint, integer, text[], boolean, text[], boolean, text, text, text, text, text, text,"
    " text)"
)
AMEND_ONCE = (
    "tradeops_amend_order_once(text, text, bigint, text, text, text, text[], text, integer,"
    " bigint, integer, text[], numeric, numeric, text, text, timestamptz, text, text, text,"
    " text, text, text, text, text)"
)

HELPERS = """
-- The key reserved for the context's principal, as idempotency.repository.RESERVE reserves
-- it (waiting for a request that holds it to end): `reserved` when it is now; else the
-- response stored with it by the same request (`fingerprint`), or NULLs for another's.
CREATE FUNCTION tradeops_reserve_key(
    in_key text, in_fingerprint text,
    OUT reserved boolean, OUT status integer, OUT body bytea, OUT headers jsonb
) LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    stored idempotency_keys%ROWTYPE;
BEGIN
    INSERT INTO idempotency_keys (principal, key, fingerprint)
    VALUES (tradeops_actor(), in_key, in_fingerprint)
    ON CONFLICT (principal, key) DO NOTHING;
    reserved := FOUND;
    IF NOT reserved THEN
        -- Taken, by a request that has committed (the insert waited for it): a statement of
        -- its own, so it sees that request's row.
        SELECT * INTO stored FROM idempotency_keys
        WHERE principal = tradeops_actor() AND key = in_key;
        IF FOUND AND stored.fingerprint = in_fingerprint THEN
            status := stored.response_status;
            body := stored.response_body;
            headers := stored.response_headers;
        END IF;
    END IF;
END $$;

-- The response to send, stored under the key the context's principal reserved.
CREATE FUNCTION tradeops_store_response(
    in_key text, in_status integer, in_document text, in_headers jsonb
) RETURNS void LANGUAGE sql VOLATILE AS $$
    UPDATE idempotency_keys SET response_status = in_status,
        response_body = convert_to(in_document, 'UTF8'), response_headers = in_headers
    WHERE principal = tradeops_actor() AND key = in_key
$$;
"""

# The wrapper of a keyed write: {args} its parameters, {call} the write without a key, which
# answers (new_version, document) and for an amendment new_id; {status} and {headers} what
# is stored.
ONCE = """
CREATE FUNCTION {name}({args}, in_key text, in_fingerprint text{extra})
RETURNS TABLE (caller tradeops_principal, status integer, body bytea, headers jsonb,
               replayed boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    who tradeops_principal;
    kept record;
    made record;
    shown jsonb;
BEGIN
    SELECT * INTO who FROM tradeops_authenticate(
        in_prefix, in_hash, in_user_id, in_email, in_app_role, in_request_id);
    IF NOT FOUND THEN
        RETURN;  -- no principal: nothing is written
    END IF;
    -- Sent alone, the statement has no BEGIN to carry its time limit: waiting for the key a
    -- concurrent request holds ends here, in the server, with nothing written.
    PERFORM set_config('lock_timeout', in_lock_timeout_ms::text, true);
    SELECT * INTO kept FROM tradeops_reserve_key(in_key, in_fingerprint);
    IF NOT kept.reserved THEN  -- a replay, or NULLs: another request's key
        RETURN QUERY SELECT who, kept.status, kept.body, kept.headers, kept.status IS NOT NULL;
        RETURN;
    END IF;
    -- The write authenticates again, called as the login role (it alone may call it): back
    -- to that role for the call, which switches to the application role once more.
    PERFORM set_config('role', 'none', true);
    SELECT * INTO made FROM {call};
    IF made.new_version IS NULL THEN  -- nothing made: undo the key, the transaction explains
        RAISE EXCEPTION 'nothing was made; the transaction explains it' USING ERRCODE = 'TO001';
    END IF;
    shown := {headers};
    PERFORM tradeops_store_response(in_key, {status}, made.document, shown);
    RETURN QUERY SELECT who, {status}, convert_to(made.document, 'UTF8'), shown, false;
END $$;

REVOKE ALL ON FUNCTION {signature} FROM PUBLIC;
"""

DECIDE_ARGS = """
    in_prefix text, in_hash text, in_user_id bigint, in_email text, in_app_role text,
    in_request_id text, in_roles text[], in_scopes text[], in_lock_timeout_ms integer,
    in_order_id bigint, in_version integer, in_from_statuses text[], in_checker boolean,
    in_others_by text[], in_approval boolean, in_note text, in_to_status text, in_event_type text,
    in_payload text, in_action text"""
AMEND_ARGS = """
    in_prefix text, in_hash text, in_user_id bigint, in_email text, in_app_role text,
    in_request_id text, in_roles text[], in_scope text, in_lock_timeout_ms integer,
    in_order_id bigint, in_version integer, in_open_statuses text[], in_quantity numeric,
    in_price numeric, in_client_order_id text, in_time_in_force text,
    in_expire_at timestamptz, in_payload text, in_event_type text, in_action text,
    in_risk_queue text, in_risk_task text"""


def _called(name: str, args: str) -> str:
    """`name` called with the wrapper's own parameters of `args`, in their order."""
    names = [part.split()[0] for part in args.split(",")]
    return f"{name}({', '.join(names)})"


FUNCTIONS = (
    HELPERS
    + ONCE.format(
        name="tradeops_decide_order_once",
        args=DECIDE_ARGS,
        extra="",
        call=_called("tradeops_decide_order", DECIDE_ARGS),
        status="200",
        headers="jsonb_build_object('ETag', '\"' || made.new_version || '\"')",
        signature=DECIDE_ONCE,
    )
    + ONCE.format(
        name="tradeops_amend_order_once",
        args=AMEND_ARGS,
        extra=", in_location text",
        call=_called("tradeops_amend_order", AMEND_ARGS),
        status="201",
        headers=(
            "jsonb_build_object('ETag', '\"' || made.new_version || '\"',"
            " 'Location', in_location || '/' || made.new_id)"
        ),
        signature=AMEND_ONCE,
    )
)


def upgrade() -> None:
    op.execute(FUNCTIONS)


def downgrade() -> None:
    for function in (AMEND_ONCE, DECIDE_ONCE, STORE_RESPONSE, RESERVE_KEY):
        op.execute(f"DROP FUNCTION {function}")
