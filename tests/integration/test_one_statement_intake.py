"""Issue 15 item 1: POST /orders in one statement (migration 0025), with every property of the
transaction it replaced.

- The installed function runs intake's statement exactly as orders.repository writes it.
- An order submitted in one statement is recorded as one submitted in a transaction: the
  order, its event, its audit entry and its risk job.
- The database itself refuses a caller who may not submit orders (the rule of
  auth.permissions, passed in): nothing is written, and the answer is the documented one.
- Nothing of the caller stays on the pooled connection.
- A retry, a refusal, an Idempotency-Key, and a statement undone by a serialization
  failure are answered by the transaction, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from pytest import MonkeyPatch
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import (
    SEED_ORDER,
    Cast,
    caller_left_on_the_one_connection,
    database_trigger,
    installed_source,
    keyed_intake_in_a_transaction,
    orders_locked,
    row_counts,
    stored_api_key,
    submit_as_key,
)
from tradeops.db.uow import APP_ROLE
from tradeops.orders import repository as orders_repo

ORDERS = "/api/v1/orders"
# What a submission writes, by table: what must match between the two ways of writing it.
WRITTEN = {
    "orders": "SELECT desk_id, client_id, instrument_id, side, order_type, time_in_force,"
    " quantity, price, currency, status, risk_status, created_by, created_by_key_id,"
    " approvals_required, version FROM orders WHERE id = :id",
    "order_events": "SELECT seq, type, desk_id, payload ? 'request_id' AS names_request"
    " FROM order_events WHERE order_id = :id",
    "audit_events": "SELECT action, entity, stream, before, after ->> 'id' AS after_id,"
    " actor FROM audit_events WHERE entity = 'order' AND entity_id = :key",
    "procrastinate_jobs": "SELECT queue_name, task_name, lock, args FROM procrastinate_jobs"
    " WHERE lock = 'order:' || :key",
}


async def written(engine: AsyncEngine, order_id: int) -> dict[str, list[dict[str, Any]]]:
    """Everything submitting order `order_id` wrote, its own id written as 0."""
    found: dict[str, list[dict[str, Any]]] = {}
    async with engine.connect() as conn:
        for table, sql in WRITTEN.items():
            params = {"id": order_id, "key": str(order_id)}
            rows = (await conn.execute(text(sql), params)).mappings().all()
            found[table] = [
                {
                    k: "order:0" if v == f"order:{order_id}" else v
                    for k, v in row.items()
                    if k not in {"after_id", "args"}
                }
                | ({"after_id": row["after_id"] == str(order_id)} if "after_id" in row else {})
                | ({"args": row["args"] == {"order_id": order_id}} if "args" in row else {})
                for row in rows
            ]
    return found


async def counts(engine: AsyncEngine) -> dict[str, int]:
    return await row_counts(engine, (*WRITTEN, "idempotency_keys"))


async def test_the_installed_function_runs_intake_as_the_code_writes_it(
    owner_engine: AsyncEngine,
) -> None:
    """The migration holds a copy of SUBMIT_ORDER's statement: a change to SUBMIT_ORDER
    without a migration that installs the function again fails here."""
    source = await installed_source(owner_engine, "tradeops_submit_order")
    installed = source.rsplit("RETURN QUERY\n", 1)[1].rsplit(";\nEND", 1)[0]
    assert installed.replace("\n", " ") == orders_repo.submit_order_function()


async def test_an_order_in_one_statement_is_recorded_as_in_a_transaction(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, monkeypatch: MonkeyPatch
) -> None:
    """The same order, once in one statement and once in a transaction (a key's order the
    one statement declines takes that path): the same answer and the same rows, but for its
    id and times."""
    alone = await client.post(ORDERS, json=SEED_ORDER, headers=cast["agent"])
    keyed_intake_in_a_transaction(monkeypatch)
    in_transaction = await client.post(
        ORDERS, json=SEED_ORDER, headers=cast["agent"] | {"Idempotency-Key": "intake-1"}
    )
    assert alone.status_code == in_transaction.status_code == 201, alone.text
    first, second = alone.json(), in_transaction.json()
    for shown in (first, second):
        for varies in ("id", "created_at", "updated_at"):
            shown.pop(varies)
    assert first == second
    assert alone.headers["location"] == f"{ORDERS}/{alone.json()['id']}"
    assert alone.headers["etag"] == in_transaction.headers["etag"] == '"1"'
    recorded = await written(owner_engine, alone.json()["id"])
    assert recorded == await written(owner_engine, in_transaction.json()["id"])
    assert all(recorded.values()), recorded  # an order, its event, its audit entry, its job
    assert recorded["orders"][0]["created_by_key_id"] is not None


@pytest.mark.parametrize(
    ("who", "status", "detail"),
    [
        ("approver", 403, "Your role or key may not submit orders."),
        ("risk", 403, "Your role or key may not submit orders."),
        ("key without orders:write", 403, "Your key lacks the scope orders:write"),
        ("revoked-looking key", 401, "The credentials are not valid"),
    ],
)
@pytest.mark.parametrize("keyed", [False, True], ids=["no key", "Idempotency-Key"])
async def test_who_may_not_submit_writes_nothing(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    who: str,
    status: int,
    detail: str,
    keyed: bool,
) -> None:
    if who == "key without orders:write":
        key = await stored_api_key(owner_engine, "agent@test.bank", ["orders:read"])
        headers = {"Authorization": f"Bearer {key}"}
    elif who == "revoked-looking key":
        key = await stored_api_key(owner_engine, "agent@test.bank", ["orders:write"])
        headers = {"Authorization": f"Bearer {key[:-1]}{'A' if key[-1] != 'A' else 'B'}"}
    else:
        headers = cast[who]
    if keyed:
        headers |= {"Idempotency-Key": "may-not-1"}
    before = await counts(owner_engine)  # the key's row besides: none left either
    answer = await client.post(ORDERS, json=SEED_ORDER, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.json()["detail"].startswith(detail)
    assert await counts(owner_engine) == before


async def test_the_database_refuses_a_caller_who_may_not_submit(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    """The function itself, called as the application calls it: a key without the scope
    gets its caller back and no submission, and nothing is written; with the scope, the
    order."""
    narrow = await stored_api_key(owner_engine, "agent@test.bank", ["orders:read"])
    wide = await stored_api_key(owner_engine, "agent@test.bank", ["orders:write"])
    before = await counts(owner_engine)
    async with owner_engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        refused = await submit_as_key(raw, narrow)
        assert refused is not None
        assert refused["user_id"] == cast.ids["agent"]
        assert refused["submitted"] is None
        assert await counts(owner_engine) == before
        allowed = await submit_as_key(raw, wide)
        assert allowed is not None
        assert allowed["submitted"]["id"] is not None
        assert allowed["submitted"]["risk_job_id"] is not None


async def test_an_order_for_a_client_of_another_desk_is_answered_as_before(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """Intake inserts nothing for a client the caller's desks do not cover; the transaction
    then answers as it always has (the client is unknown to them: no existence leak)."""
    before = await counts(owner_engine)
    alone = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader_fi"])
    keyed = cast["trader_fi"] | {"Idempotency-Key": "other-desk"}
    in_transaction = await client.post(ORDERS, json=SEED_ORDER, headers=keyed)
    assert alone.status_code == in_transaction.status_code == 422, alone.text
    first, second = alone.json(), in_transaction.json()
    assert first.pop("request_id") != second.pop("request_id")
    assert first == second
    assert await counts(owner_engine) == before


async def test_a_retry_and_a_refusal_are_answered_by_the_transaction(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order = {**SEED_ORDER, "client_order_id": "retry-1"}
    first = await client.post(ORDERS, json=order, headers=cast["trader"])
    again = await client.post(ORDERS, json=order, headers=cast["trader"])
    assert (first.status_code, again.status_code) == (201, 200), again.text
    assert again.json() == first.json()
    other = await client.post(ORDERS, json={**order, "quantity": 60}, headers=cast["trader"])
    assert other.status_code == 409, other.text
    assert other.json()["existing_order_id"] == first.json()["id"]
    odd_lot = await client.post(
        ORDERS, json={**SEED_ORDER, "quantity": "0.5"}, headers=cast["trader"]
    )
    assert odd_lot.status_code == 422, odd_lot.text
    assert (await counts(owner_engine))["orders"] == 1


@pytest.fixture
async def one_serialization_failure(owner_engine: AsyncEngine) -> AsyncIterator[None]:
    """The next order inserted fails with a serialization failure, once (a sequence counts,
    outside any transaction)."""
    async with owner_engine.begin() as conn:
        await conn.execute(text("CREATE SEQUENCE test_intake_attempts"))
        await conn.execute(text(f"GRANT USAGE ON SEQUENCE test_intake_attempts TO {APP_ROLE}"))
    fail_first = (
        "IF nextval('test_intake_attempts') = 1 THEN"
        " RAISE EXCEPTION 'could not serialize' USING ERRCODE = '40001'; END IF;"
    )
    try:
        fires = "BEFORE INSERT ON orders FOR EACH ROW"
        async with database_trigger(owner_engine, "test_fail_once", fires, fail_first):
            yield
    finally:
        async with owner_engine.begin() as conn:
            await conn.execute(text("DROP SEQUENCE test_intake_attempts"))


async def test_a_statement_undone_by_a_serialization_failure_runs_again_in_a_transaction(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    one_serialization_failure: None,
) -> None:
    answer = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    assert answer.status_code == 201, answer.text
    assert (await counts(owner_engine))["orders"] == 1
    async with owner_engine.connect() as conn:
        attempts = await conn.execute(text("SELECT last_value FROM test_intake_attempts"))
        assert attempts.scalar_one() == 2  # the one statement, then the transaction


async def test_nothing_of_the_caller_stays_on_the_pooled_connection(
    one_connection_app: tuple[FastAPI, httpx.AsyncClient], cast: Cast
) -> None:
    app, http = one_connection_app
    created = await http.post(ORDERS, json=SEED_ORDER, headers=cast["agent"])
    assert created.status_code == 201, created.text
    await caller_left_on_the_one_connection(app)  # the one connection intake used


async def test_the_server_bounds_a_new_orders_wait_for_a_lock(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    """With no BEGIN to carry a statement timeout, the function sets its own lock_timeout:
    behind a lock, the server ends the statement (nothing written), with no limit of the
    client's (a hang would fail this test by its own deadline instead)."""
    key = await stored_api_key(owner_engine, "agent@test.bank", ["orders:write"])
    async with orders_locked(owner_engine), owner_engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        with pytest.raises(asyncpg.LockNotAvailableError):
            await asyncio.wait_for(submit_as_key(raw, key, lock_timeout_ms=200), timeout=10)
    assert (await counts(owner_engine))["orders"] == 0


async def test_a_new_order_behind_a_lock_is_answered_504_with_nothing_written(
    one_connection_app: tuple[FastAPI, httpx.AsyncClient],
    cast: Cast,
    owner_engine: AsyncEngine,
) -> None:
    _, http = one_connection_app
    before = await counts(owner_engine)
    for headers in (cast["trader"], cast["trader"] | {"Idempotency-Key": "behind-a-lock"}):
        async with orders_locked(owner_engine) as waiting:
            answer = await http.post(ORDERS, json=SEED_ORDER, headers=headers)
            still_waiting = await waiting("tradeops_submit_order")
        assert answer.status_code == 504, answer.text
        assert answer.json()["type"].endswith("/database-timeout")
        assert still_waiting == 0
        assert await counts(owner_engine) == before  # nor the key: the same key runs again
        again = await http.post(ORDERS, json=SEED_ORDER, headers=headers)
        assert again.status_code == 201, again.text
        before = await counts(owner_engine)


# --- With an Idempotency-Key (migration 0038) ------------------------------------------------

KEY_ROW = (
    "SELECT fingerprint, response_status, response_body, response_headers"
    " FROM idempotency_keys WHERE key = :key"
)


async def stored_under(engine: AsyncEngine, key: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (await conn.execute(text(KEY_ROW), {"key": key})).mappings().one()
    return dict(row)


def without_id_and_times(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in {"id", "created_at", "updated_at"}}


async def test_a_keyed_order_in_one_statement_is_recorded_and_stored_as_in_a_transaction(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, monkeypatch: MonkeyPatch
) -> None:
    """The same order under two keys, once in one statement and once in a transaction: the
    same answer, the same rows, and the same response stored under each key."""
    alone = await client.post(
        ORDERS, json=SEED_ORDER, headers=cast["agent"] | {"Idempotency-Key": "alone-1"}
    )
    keyed_intake_in_a_transaction(monkeypatch)
    in_transaction = await client.post(
        ORDERS, json=SEED_ORDER, headers=cast["agent"] | {"Idempotency-Key": "in-transaction-1"}
    )
    assert alone.status_code == in_transaction.status_code == 201, alone.text
    assert without_id_and_times(alone.json()) == without_id_and_times(in_transaction.json())
    assert alone.headers["location"] == f"{ORDERS}/{alone.json()['id']}"
    assert alone.headers["etag"] == in_transaction.headers["etag"] == '"1"'
    assert "idempotent-replayed" not in alone.headers
    recorded = await written(owner_engine, alone.json()["id"])
    assert recorded == await written(owner_engine, in_transaction.json()["id"])
    assert all(recorded.values()), recorded  # an order, its event, its audit entry, its job
    one = await stored_under(owner_engine, "alone-1")
    other = await stored_under(owner_engine, "in-transaction-1")
    assert one["fingerprint"] == other["fingerprint"]  # the same request
    assert one["response_status"] == other["response_status"] == 201
    assert one["response_body"] == alone.content  # what was sent is what is kept
    assert other["response_body"] == in_transaction.content
    assert one["response_headers"] == {"ETag": '"1"', "Location": alone.headers["location"]}
    assert other["response_headers"] == {
        "ETag": '"1"',
        "Location": in_transaction.headers["location"],
    }


async def test_a_key_stored_either_way_is_replayed_either_way(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, monkeypatch: MonkeyPatch
) -> None:
    """A response stored by the one statement is replayed by the transaction and the other
    way round: the first answer, byte for byte, marked replayed, and nothing written."""
    by_statement = cast["trader"] | {"Idempotency-Key": "by-statement"}
    by_transaction = cast["trader"] | {"Idempotency-Key": "by-transaction"}
    first = await client.post(ORDERS, json=SEED_ORDER, headers=by_statement)
    with monkeypatch.context() as declining:
        keyed_intake_in_a_transaction(declining)
        second = await client.post(ORDERS, json=SEED_ORDER, headers=by_transaction)
        before = await counts(owner_engine)
        replayed_by_transaction = await client.post(ORDERS, json=SEED_ORDER, headers=by_statement)
    replayed_by_statement = await client.post(ORDERS, json=SEED_ORDER, headers=by_transaction)
    assert await counts(owner_engine) == before
    for original, replay in ((first, replayed_by_transaction), (second, replayed_by_statement)):
        assert (original.status_code, replay.status_code) == (201, 201), replay.text
        assert replay.content == original.content
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.headers["location"] == original.headers["location"]
        assert replay.headers["etag"] == original.headers["etag"]
    reused = await client.post(ORDERS, json={**SEED_ORDER, "quantity": 60}, headers=by_statement)
    assert reused.status_code == 422, reused.text
    assert reused.json()["type"].endswith("/idempotency-key-reused")
    assert await counts(owner_engine) == before


async def test_a_keyed_order_intake_refuses_leaves_neither_key_nor_caller_behind(
    one_connection_app: tuple[FastAPI, httpx.AsyncClient], cast: Cast, owner_engine: AsyncEngine
) -> None:
    """An order intake does not record undoes the statement, the key's reservation with it
    (SQLSTATE TO001); the transaction explains the refusal, the pooled connection keeps
    nothing of the caller, and the same key then serves the corrected order."""
    app, http = one_connection_app
    keyed = cast["trader"] | {"Idempotency-Key": "odd-lot-1"}
    before = await counts(owner_engine)
    odd_lot = await http.post(ORDERS, json={**SEED_ORDER, "quantity": "0.5"}, headers=keyed)
    assert odd_lot.status_code == 422, odd_lot.text
    assert "lot size" in odd_lot.json()["detail"]
    assert await counts(owner_engine) == before
    await caller_left_on_the_one_connection(app)
    corrected = await http.post(ORDERS, json=SEED_ORDER, headers=keyed)
    assert corrected.status_code == 201, corrected.text
    assert "idempotent-replayed" not in corrected.headers
    await caller_left_on_the_one_connection(app)
