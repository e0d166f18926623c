"""Issue 15, "pydantic on the way out": GET /orders/{id} sends the JSON document PostgreSQL
writes (migration 0026). It must be the very bytes OrderOut.model_dump_json() writes for the
same order (the transaction's read, the list, every write's answer), whatever the order
holds: approvals and their notes, risk reasons of any shape, amounts without trailing zeros,
missing prices and times, times with and without microseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import SEED_ORDER, Cast, approved_order, pass_risk_check
from tradeops.auth.principal import SYSTEM
from tradeops.db.uow import run_in_transaction
from tradeops.orders import repository as repo
from tradeops.orders.schemas import OrderOut

ORDERS = "/api/v1/orders"
FILL = {"venue": "XNAS", "executed_at": "2026-11-23T14:30:05.125Z"}

# Text a person may type into a note, and what JSON must escape in it.
AWKWARD = 'he said "ok" \\ then /left/\n\té ü 中文 🙂 \u2028 \x01\x1f \x7f'


async def as_pydantic_writes_it(app: FastAPI, order_id: int) -> bytes:
    """The order read in a transaction (orders.repository.ORDER_BY_ID) as OrderOut writes it."""
    params = {"id": order_id, "all_desks": True, "desk_ids": []}
    order = await run_in_transaction(
        app.state.db, SYSTEM, lambda uow: uow.row(repo.ORDER_BY_ID, params)
    )
    assert isinstance(order, OrderOut)
    return order.model_dump_json().encode()


async def sent(client: httpx.AsyncClient, cast: Cast, order_id: int) -> httpx.Response:
    answer = await client.get(f"{ORDERS}/{order_id}", headers=cast["trader"])
    assert answer.status_code == 200, answer.text
    return answer


async def owner_sets(engine: AsyncEngine, order_id: int, assignments: str, **values: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(f"UPDATE orders SET {assignments} WHERE id = :id"),
            {"id": order_id, **values},
        )


async def test_a_new_order_is_sent_as_pydantic_writes_it(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast
) -> None:
    created = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    order_id = created.json()["id"]
    answer = await sent(client, cast, order_id)
    assert answer.content == await as_pydantic_writes_it(app, order_id)
    assert answer.content == created.content, "the read shows what the write answered"
    assert answer.headers["etag"] == created.headers["etag"] == '"1"'
    assert answer.headers["content-type"] == "application/json"


async def test_approvals_and_their_notes_are_sent_as_pydantic_writes_them(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    created = await client.post(
        ORDERS, json={**SEED_ORDER, "client_order_id": "awkward-1"}, headers=cast["trader"]
    )
    order_id = created.json()["id"]
    reviewed = await client.post(f"{ORDERS}/{order_id}/review", headers=cast["trader2"])
    assert reviewed.status_code == 200, reviewed.text
    await pass_risk_check(owner_engine, order_id)
    approved = await client.post(
        f"{ORDERS}/{order_id}/approve", json={"note": AWKWARD}, headers=cast["approver"]
    )
    assert approved.status_code == 200, approved.text
    answer = await sent(client, cast, order_id)
    assert answer.json()["approvals"][0]["note"] == AWKWARD
    assert answer.content == await as_pydantic_writes_it(app, order_id)
    assert answer.content == approved.content


async def test_risk_reasons_of_any_shape_are_sent_compact_in_their_order(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    created = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    order_id = created.json()["id"]
    reasons = (
        '[{"code": "MAX_NOTIONAL", "message": "'
        + AWKWARD.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\t", "\\t")
        .replace("\x01", "\\u0001")
        .replace("\x1f", "\\u001f")
        + '", "limit": "250000", "source": "desk", "count": 3, "ratio": 0.25,'
        ' "missing": null, "flags": [true, false, [], {}], "nested": {"b": [1, {"z": "y"}],'
        ' "a": -7}}, {"code": "RESTRICTED_INSTRUMENT", "message": "AAPL"}]'
    )
    await owner_sets(
        owner_engine, order_id, "risk_reasons = CAST(:reasons AS jsonb)", reasons=reasons
    )
    answer = await sent(client, cast, order_id)
    assert answer.json()["risk_reasons"][0]["message"] == AWKWARD
    assert answer.content == await as_pydantic_writes_it(app, order_id)


async def test_amounts_and_times_are_sent_as_pydantic_writes_them(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """A market order (no price), good till cancelled (no expiry), partly filled at an
    average price of many decimals; times with no microseconds, with trailing zeros, and
    with all six digits."""
    market = {"order_type": "MARKET", "time_in_force": "GTC", "quantity": "100", "price": None}
    order_id = await approved_order(client, cast, owner_engine, **market)
    for number, (quantity, price) in enumerate((("10", "192.5"), ("20", "192.7"))):
        fill = {**FILL, "quantity": quantity, "price": price, "external_id": f"X-{number}"}
        filled = await client.post(
            f"{ORDERS}/{order_id}/executions", json=fill, headers=cast["admin"]
        )
        assert filled.status_code == 201, filled.text
    for micro in (0, 500000, 1):
        at = datetime(2026, 1, 2, 3, 4, 5, micro, tzinfo=UTC)
        await owner_sets(owner_engine, order_id, "updated_at = :at", at=at)
        answer = await sent(client, cast, order_id)
        shown = answer.json()
        assert shown["price"] is None and shown["expire_at"] is None
        assert (shown["quantity"], shown["filled_quantity"]) == ("100", "30")
        assert shown["avg_fill_price"] == "192.633333"
        assert answer.content == await as_pydantic_writes_it(app, order_id)


async def test_another_desks_order_is_not_found_and_no_credentials_read_nothing(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    created = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    order_id = created.json()["id"]
    hidden = await client.get(f"{ORDERS}/{order_id}", headers=cast["trader_fi"])
    assert hidden.status_code == 404, hidden.text
    assert hidden.json()["type"].endswith("/order-not-found")
    anonymous = await client.get(f"{ORDERS}/{order_id}")
    assert anonymous.status_code == 401
