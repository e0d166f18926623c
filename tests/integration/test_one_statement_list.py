"""Issue 15 item 1, "a read needs one": GET /orders in one statement (migration 0041), with
every property of the transaction it replaced.

- Every page is the transaction's, byte for byte: each filter, a client, symbol or desk
  that names nothing the caller sees (an empty page), every page of a cursor's walk by id
  and by creation time, for a caller on one desk, on another, and on all.
- Who may and who may not: no credentials 401, a key without orders:read 403, another
  desk's orders, clients and desk never shown.
- A query the endpoint refuses (an unknown name, a value, a cursor) is still its 422.
- The page is read as the application role, for a caller the credentials name only, and
  nothing of the caller stays on the pooled connection; both of its reads see one snapshot.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import (
    Cast,
    approved_order,
    caller_left_on_the_one_connection,
    stored_api_key,
    submitted_order,
)
from tradeops.auth.keys import hash_key, parse_key
from tradeops.db.uow import APP_ROLE
from tradeops.orders import router as orders_router
from tradeops.orders import service

ORDERS = "/api/v1/orders"

# Every filter the list takes, alone and together, and names that match nothing.
QUERIES: list[dict[str, str]] = [
    {},
    {"status": "PENDING"},
    {"status": "APPROVED"},
    {"risk_status": "PASSED"},
    {"side": "SELL"},
    {"client_id": "CUST-1001"},
    {"client_id": "CUST-1001", "status": "PENDING", "side": "BUY"},
    {"client_id": "CUST-NONE"},
    {"symbol": "aapl"},
    {"symbol": "NOPE"},
    {"desk": "EQ-US"},
    {"desk": "FI-EU"},
    {"desk": "XX-XX"},
    {"client_order_id": "list-2"},
    {"created_from": "2000-01-01T00:00:00Z"},
    {"created_to": "2000-01-01T00:00:00Z"},
    {"created_from": "2000-01-01T00:00:00Z", "created_to": "2999-01-01T00:00:00+01:00"},
]


async def listed_orders(client: httpx.AsyncClient, cast: Cast, engine: AsyncEngine) -> None:
    """Orders of both desks: new, approved, sold, under client_order_ids."""
    for n in range(4):
        await submitted_order(client, cast, client_order_id=f"list-{n}")
    await submitted_order(client, cast, side="SELL")
    await submitted_order(client, cast, "trader_fi", client_id="CUST-2001", symbol="MSFT")
    await approved_order(client, cast, engine)


async def pages(client: httpx.AsyncClient, headers: dict[str, str]) -> list[tuple[int, bytes]]:
    """The answers to every query, and to each page of a walk by cursor (two a page)."""
    answers = []
    for wanted in QUERIES:
        answer = await client.get(ORDERS, params=wanted, headers=headers)
        answers.append((answer.status_code, answer.content))
        walk: dict[str, Any] = {**wanted, "limit": "2"}
        while True:
            page = await client.get(ORDERS, params=walk, headers=headers)
            answers.append((page.status_code, page.content))
            cursor = page.json().get("next_cursor")
            if cursor is None:
                break
            walk["after"] = cursor
    return answers


async def test_every_page_is_the_transactions_byte_for_byte(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await listed_orders(client, cast, owner_engine)
    callers = ("trader", "trader_fi", "admin", "agent")
    read_page, served = service.read_order_page, []

    async def counted(*args: Any) -> Any:
        served.append(args)
        return await read_page(*args)

    monkeypatch.setattr(service, "read_order_page", counted)
    alone = {who: await pages(client, cast[who]) for who in callers}
    assert len(served) == sum(len(answers) for answers in alone.values()), "each in one"
    # The endpoint's own answer: with no query it takes, the one statement declines.
    monkeypatch.setattr(orders_router, "declared_query", lambda request: None)
    for who in callers:
        assert await pages(client, cast[who]) == alone[who], who
    shown = {who: [orjson.loads(body) for _, body in alone[who]] for who in callers}
    assert all(status == 200 for who in callers for status, _ in alone[who])
    assert len(shown["admin"][0]["items"]) == 7, "every order, both desks"
    assert {o["desk"] for o in shown["trader"][0]["items"]} == {"EQ-US"}
    assert {o["desk"] for o in shown["trader_fi"][0]["items"]} == {"FI-EU"}


async def test_another_desks_orders_clients_and_desk_are_never_shown(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    theirs = await submitted_order(
        client, cast, "trader_fi", client_id="CUST-2001", symbol="MSFT", client_order_id="fi-1"
    )
    mine = await submitted_order(client, cast)
    for wanted, ids in (
        ({}, [mine["id"]]),
        ({"client_id": "CUST-2001"}, []),  # their client is no client of mine
        ({"desk": "FI-EU"}, []),  # nor their desk
        ({"symbol": "MSFT"}, []),  # an instrument is everyone's, its orders are not
        ({"client_order_id": theirs["client_order_id"]}, []),
    ):
        page = await client.get(ORDERS, params=wanted, headers=cast["trader"])
        assert page.status_code == 200, page.text
        assert [o["id"] for o in page.json()["items"]] == ids, wanted


async def test_who_may_list_and_who_may_not(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await submitted_order(client, cast)
    no_read = await stored_api_key(owner_engine, "agent@test.bank", ["orders:write"])
    for headers, status in (
        (cast["nobody"], 401),
        ({"Authorization": "Bearer not-a-credential"}, 401),
        ({"Authorization": f"Bearer {no_read}"}, 403),
        (cast["risk"], 200),
        (cast["approver"], 200),
    ):
        answer = await client.get(ORDERS, headers=headers)
        assert answer.status_code == status, (headers, answer.text)
        if status != 200:
            assert answer.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("wanted", "field"),
    [
        ({"symbl": "AAPL"}, "query.symbl"),
        ({"status": "MAYBE"}, "query.status"),
        ({"limit": "0"}, "query.limit"),
        ({"limit": "501"}, "query.limit"),
        ({"created_from": "yesterday"}, "query.created_from"),
        ({"after": "not-a-cursor"}, None),
        ({"after": "1", "created_from": "2000-01-01T00:00:00Z"}, None),  # an id for a time
    ],
)
async def test_a_query_the_endpoint_refuses_is_still_its_422(
    client: httpx.AsyncClient, cast: Cast, wanted: dict[str, str], field: str | None
) -> None:
    answer = await client.get(ORDERS, params=wanted, headers=cast["trader"])
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert answer.headers["content-type"] == "application/problem+json"
    if field is not None:
        assert field in answer.text, problem
    # Credentials first, as always: without them the same query is a 401.
    assert (await client.get(ORDERS, params=wanted)).status_code == 401


READ_PAGE = (
    "SELECT caller, items, more FROM tradeops_read_order_page($1, $2, NULL, NULL, $3, 'req',"
    " NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 50)"
)


async def test_the_page_is_read_as_the_application_role_for_a_caller_found_only(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    key = await stored_api_key(owner_engine, "agent@test.bank", ["orders:read"])
    mine = await submitted_order(client, cast)
    await submitted_order(client, cast, "trader_fi", client_id="CUST-2001", symbol="MSFT")
    async with owner_engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        login_role = await raw.fetchval("SELECT current_user")
        async with raw.transaction():
            row = await raw.fetchrow(READ_PAGE, parse_key(key), hash_key(key), APP_ROLE)
            assert row is not None
            assert [o["id"] for o in orjson.loads(row["items"])] == [mine["id"]]
            role, user_id = await raw.fetchrow(
                "SELECT current_user, current_setting('tradeops.user_id')"
            )
            assert (role, int(user_id)) == (APP_ROLE, cast.ids["agent"])
        async with raw.transaction():
            nobody = await raw.fetch(READ_PAGE, parse_key(key), hash_key(key + "x"), APP_ROLE)
            assert nobody == [], "a bad credential names nobody and reads nothing"
            assert await raw.fetchval("SELECT current_user") == login_role
        # Row-level security, not only the desk condition: the page's function run as the
        # application role for every desk, with the context of EQ-US, shows EQ-US alone.
        async with raw.transaction():
            await raw.execute(f"SET LOCAL ROLE {APP_ROLE}")
            await raw.execute("SELECT set_config('tradeops.desk_ids', $1, true)", "{}")
            everything = await raw.fetchval(
                "SELECT items FROM tradeops_order_page(true, '{}', NULL, NULL, NULL, NULL,"
                " NULL, NULL, NULL, NULL, NULL, NULL, NULL, 50)"
            )
            assert orjson.loads(everything) == []


async def test_both_reads_of_a_page_see_one_snapshot(owner_engine: AsyncEngine) -> None:
    """The page's ids and its orders' documents are two statements of a STABLE function:
    both see the snapshot of the statement that calls it, so an order changed between them
    cannot show under a filter it no longer meets."""
    async with owner_engine.connect() as conn:
        volatility = await conn.scalar(
            text("SELECT provolatile::text FROM pg_proc WHERE proname = 'tradeops_order_page'")
        )
    assert volatility == "s"


async def test_nothing_of_the_caller_stays_on_the_pooled_connection(
    one_connection_app: tuple[FastAPI, httpx.AsyncClient], cast: Cast
) -> None:
    app, http = one_connection_app
    await submitted_order(http, cast)
    listed = await http.get(ORDERS, params={"client_id": "CUST-1001"}, headers=cast["agent"])
    assert listed.status_code == 200 and listed.json()["items"], listed.text
    await caller_left_on_the_one_connection(app)
