"""Issue 15 item 1: GET /orders/{id} in one statement (migration 0019), with every security
property of the transaction it replaced.

- It shows an order exactly as a write's answer and the list do (the view orders_as_shown
  and orders.repository.order_view() agree, approvals and all; since migration 0026 the
  document PostgreSQL writes, test_order_document.py).
- The read runs as the application role with the caller's context, and only for a caller the
  credentials name: a bad credential reads nothing.
- Nothing of the caller stays on the pooled connection once the statement is done.
- The statement timeout still holds without a BEGIN to carry it: the driver cancels the
  query on the server and the caller gets the documented 504.
- Your own order by its client_order_id is one statement too (migration 0046).
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import (
    SEED_ORDER,
    Cast,
    approved_order,
    caller_left_on_the_one_connection,
    orders_locked,
    stored_api_key,
)
from tests.integration.test_order_document import as_pydantic_writes_it
from tradeops.auth.authentication import credential_parameters
from tradeops.auth.keys import hash_key, parse_key
from tradeops.auth.repository import Authenticated
from tradeops.db.uow import APP_ROLE, one_statement
from tradeops.orders import repository as orders_repo
from tradeops.orders.schemas import OrderOut
from tradeops.positions import repository as positions_repo

ORDERS = "/api/v1/orders"
READ_ORDER = (
    "SELECT caller, version, document FROM tradeops_read_order($1, $2, NULL, NULL, $3, 'req', $4)"
)


async def test_an_order_reads_as_its_last_change_answered_it(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """Submitted, reviewed, approved (an approval recorded): each step's answer, written by
    order_view() in the write's RETURNING, is what the one-statement read shows next."""
    order_id = await approved_order(client, cast, owner_engine)
    shown = await client.get(f"{ORDERS}/{order_id}", headers=cast["trader"])
    assert shown.status_code == 200, shown.text
    assert shown.json()["approvals"], "an approved order shows its approval"
    listed = await client.get(ORDERS, headers=cast["trader"])
    assert listed.json()["items"][0] == shown.json()
    created = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    reviewed = await client.post(f"{ORDERS}/{created.json()['id']}/review", headers=cast["trader2"])
    assert reviewed.status_code == 200, reviewed.text
    again = await client.get(f"{ORDERS}/{created.json()['id']}", headers=cast["trader"])
    assert again.json() == reviewed.json()
    assert again.headers["etag"] == reviewed.headers["etag"]


async def test_the_read_runs_as_the_application_role_for_a_caller_found_only(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    key = await stored_api_key(owner_engine, "agent@test.bank", ["orders:read"])
    created = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    order_id = created.json()["id"]
    prefix = parse_key(key)
    async with owner_engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        login_role = await raw.fetchval("SELECT current_user")
        async with raw.transaction():
            row = await raw.fetchrow(READ_ORDER, prefix, hash_key(key), APP_ROLE, order_id)
            assert row is not None and orjson.loads(row["document"])["id"] == order_id
            # The statement switched the transaction to the application role, with the
            # key's context: what row-level security read the order under.
            role, user_id = await raw.fetchrow(
                "SELECT current_user, current_setting('tradeops.user_id')"
            )
            assert (role, int(user_id)) == (APP_ROLE, cast.ids["agent"])
        async with raw.transaction():
            nobody = await raw.fetch(READ_ORDER, prefix, hash_key(key + "x"), APP_ROLE, order_id)
            assert nobody == [], "a bad credential names nobody and reads nothing"
            assert await raw.fetchval("SELECT current_user") == login_role


async def test_nothing_of_the_caller_stays_on_the_pooled_connection(
    one_connection_app: tuple[FastAPI, httpx.AsyncClient], cast: Cast
) -> None:
    app, http = one_connection_app
    created = await http.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    assert (await http.get(f"{ORDERS}/{created.json()['id']}", headers=cast["agent"])).is_success
    await caller_left_on_the_one_connection(app)  # the one connection the read used


async def test_a_read_past_the_statement_timeout_is_cancelled_and_answered_504(
    one_connection_app: tuple[FastAPI, httpx.AsyncClient],
    cast: Cast,
    owner_engine: AsyncEngine,
) -> None:
    _, http = one_connection_app
    created = await http.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    async with orders_locked(owner_engine) as waiting:
        answer = await http.get(f"{ORDERS}/{created.json()['id']}", headers=cast["trader"])
        # Cancelled on the server, not left waiting behind the lock.
        still_waiting = await waiting("tradeops_read_order")
    assert answer.status_code == 504, answer.text
    assert answer.json()["type"].endswith("/database-timeout")
    assert still_waiting == 0
    # The connection is fit for the next request.
    again = await http.get(f"{ORDERS}/{created.json()['id']}", headers=cast["trader"])
    assert again.status_code == 200, again.text


class CountingValidator:
    """A model's validator that counts the validations it runs."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    def validate_python(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.inner.validate_python(*args, **kwargs)

    def validate_json(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.inner.validate_json(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_the_reads_hand_services_typed_rows_and_the_order_is_sent_as_written(
    app: FastAPI,
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = await stored_api_key(owner_engine, "agent@test.bank", ["orders:read", "positions:read"])
    created = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    order_id = created.json()["id"]
    credential = credential_parameters(key, app.state.tokens, "req")
    params = {**credential, "order_id": order_id}
    read = await one_statement(app.state.db, orders_repo.READ_ORDER, params)
    assert read is not None and isinstance(read.caller, Authenticated)
    assert isinstance(read.found, orders_repo.OrderDocument)
    assert orjson.loads(read.found.document)["id"] == order_id
    assert read.caller.user_id == cast.ids["agent"]
    params = {**credential, "client_id": SEED_ORDER["client_id"]}
    portfolio = await one_statement(app.state.db, positions_repo.READ_PORTFOLIO, params)
    assert portfolio is not None and isinstance(portfolio.caller, Authenticated)

    counting = CountingValidator(OrderOut.__pydantic_validator__)
    monkeypatch.setattr(OrderOut, "__pydantic_validator__", counting)
    shown = await client.get(f"{ORDERS}/{order_id}", headers={"X-API-Key": key})
    assert shown.status_code == 200, shown.text
    assert counting.calls == 0, "GET /orders/{id} sends the document PostgreSQL wrote"


async def test_your_own_order_by_client_order_id_is_read_in_one_statement(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """GET /orders:by_client_order_id in one statement (migration 0046) answers the caller's
    own order as GET /orders/{id} and the transaction's read write it; anything else (none of
    theirs, an approver's look-up of their desks) is the transaction's answer, as before."""
    mine = await client.post(
        ORDERS, json={**SEED_ORDER, "client_order_id": "own-1"}, headers=cast["agent"]
    )
    by_id = await client.get(f"{ORDERS}/{mine.json()['id']}", headers=cast["agent"])
    found = await client.get(
        f"{ORDERS}:by_client_order_id", params={"client_order_id": "own-1"}, headers=cast["agent"]
    )
    assert found.status_code == 200, found.text
    assert found.content == by_id.content == await as_pydantic_writes_it(app, mine.json()["id"])
    assert found.headers["etag"] == by_id.headers["etag"] == '"1"'
    no_read = await stored_api_key(owner_engine, "agent@test.bank", ["orders:write"])
    for headers, status in (
        (cast["approver"], 200),  # not theirs: the desk's one order, in the transaction
        (cast["trader"], 404),  # another maker's
        (cast["trader_fi"], 404),
        ({"Authorization": f"Bearer {no_read}"}, 403),
        (cast["nobody"], 401),
    ):
        answer = await client.get(
            f"{ORDERS}:by_client_order_id", params={"client_order_id": "own-1"}, headers=headers
        )
        assert answer.status_code == status, (headers, answer.text)
