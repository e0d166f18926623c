"""Issue 15: an amendment (PATCH /orders/{id}) in one statement (migration 0040), with every
property of the transaction it replaced.

- The installed function runs the transaction's statements exactly as the code writes them.
- An amendment in one statement makes what one in a transaction makes (an Idempotency-Key,
  its one statement declined, takes that path): the same answer, the same new order, the
  old one REPLACED, the same events and risk job.
- An amendment it does not make (a rule refuses it, a caller who may not, another desk, a
  client_order_id taken) writes nothing and is answered by the transaction, as documented.
- Nothing of the caller stays on the pooled connection; an amendment behind a lock is
  answered 504 with nothing written.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from pytest import MonkeyPatch
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import (
    SEED_ORDER,
    Cast,
    caller_left_on_the_one_connection,
    installed_source,
    keyed_writes_in_a_transaction,
    orders_locked,
    pass_risk_check,
    row_counts,
    submitted_order,
)
from tradeops.orders.repository import amend_order_function

ORDERS = "/api/v1/orders"
TABLES = ("orders", "order_events", "audit_events", "procrastinate_jobs")


async def counts(engine: AsyncEngine) -> dict[str, int]:
    return await row_counts(engine, TABLES)


async def test_the_installed_function_runs_the_amendments_statements_as_the_code_writes_them(
    owner_engine: AsyncEngine,
) -> None:
    source = await installed_source(owner_engine, "tradeops_amend_order")
    installed = " ".join(source.split())
    for statement in amend_order_function():
        assert " ".join(statement.split()) + ";" in installed, statement


MADE = {
    "orders": "SELECT side, order_type, time_in_force, quantity, price, status, risk_status,"
    " version, approvals_required, created_by, created_by_key_id, client_order_id,"
    " replaces IS NOT NULL AS replaces, replaced_by IS NOT NULL AS replaced"
    " FROM orders WHERE id IN (:old, :new) ORDER BY id",
    "events": "SELECT e.seq, e.type, e.payload - 'request_id' - 'replaces' - 'replaced_by'"
    " AS payload FROM order_events e WHERE e.order_id IN (:old, :new) ORDER BY e.order_id, e.seq",
    "audit": "SELECT action, entity FROM audit_events WHERE entity = 'order'"
    " AND entity_id IN (CAST(CAST(:old AS bigint) AS text), CAST(CAST(:new AS bigint) AS text))"
    " ORDER BY id",
    "jobs": "SELECT queue_name, task_name FROM procrastinate_jobs"
    " WHERE lock IN ('order:' || CAST(:old AS bigint), 'order:' || CAST(:new AS bigint))"
    " ORDER BY id",
}


async def made(engine: AsyncEngine, old: int, new: int) -> dict[str, list[dict[str, Any]]]:
    async with engine.connect() as conn:
        return {
            name: [
                dict(row)
                for row in (await conn.execute(text(sql), {"old": old, "new": new})).mappings()
            ]
            for name, sql in MADE.items()
        }


async def test_an_amendment_in_one_statement_makes_what_one_in_a_transaction_makes(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, monkeypatch: MonkeyPatch
) -> None:
    """Two reviewed orders amended alike, once in one statement and once in a transaction
    (an Idempotency-Key, its one statement declined, takes that path): the same answers and
    the same rows, but for ids and times."""
    answers, books = [], []
    for key in ({}, {"Idempotency-Key": "amend-1"}):
        if key:
            keyed_writes_in_a_transaction(monkeypatch)
        old = await submitted_order(client, cast)
        await pass_risk_check(owner_engine, old["id"])
        reviewed = await client.post(f"{ORDERS}/{old['id']}/review", headers=cast["trader2"])
        assert reviewed.status_code == 200, reviewed.text
        body = {"quantity": "60", "price": "191.5", "time_in_force": "GTC"}
        answer = await client.patch(
            f"{ORDERS}/{old['id']}", json=body, headers=cast["trader"] | {"If-Match": '"2"'} | key
        )
        assert answer.status_code == 201, answer.text
        new = answer.json()
        assert answer.headers["location"] == f"{ORDERS}/{new['id']}"
        assert answer.headers["etag"] == f'"{new["version"]}"'
        assert new["replaces"] == old["id"]
        read = await client.get(f"{ORDERS}/{new['id']}", headers=cast["trader"])
        assert answer.content == read.content  # the new order as GET shows it
        books.append(await made(owner_engine, old["id"], new["id"]))
        answers.append(
            {
                k: v
                for k, v in new.items()
                if k not in {"id", "replaces", "created_at", "updated_at"}
            }
        )
    assert answers[0] == answers[1]
    assert books[0] == books[1]
    assert [o["status"] for o in books[0]["orders"]] == ["REPLACED", "PENDING"]
    assert len(books[0]["jobs"]) == 2  # the old order's risk check, and the new one's


async def test_an_amendment_not_made_alone_writes_nothing_and_is_answered_as_before(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order = await submitted_order(client, cast)
    market = await submitted_order(client, cast, order_type="MARKET", price=None)
    used = await submitted_order(client, cast, client_order_id="used-1")
    fi = await client.post(
        ORDERS, json={**SEED_ORDER, "client_id": "CUST-2001"}, headers=cast["trader_fi"]
    )
    cancelled = await submitted_order(client, cast)
    assert (
        await client.post(f"{ORDERS}/{cancelled['id']}/cancel", headers=cast["trader"])
    ).status_code == 200
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    before = await counts(owner_engine)
    refused = {
        "stale version": (order["id"], {"quantity": "60"}, {"If-Match": '"7"'}, "trader", 409),
        "not its maker": (order["id"], {"quantity": "60"}, {}, "trader2", 403),
        "an approver": (order["id"], {"quantity": "60"}, {}, "approver", 403),
        "closed": (cancelled["id"], {"quantity": "60"}, {}, "trader", 409),
        "a MARKET order's price": (market["id"], {"price": "190"}, {}, "trader", 422),
        "off the lot": (order["id"], {"quantity": "0.5"}, {}, "trader", 422),
        "off the tick": (order["id"], {"price": "191.555"}, {}, "trader", 422),
        "GTD without expiry": (order["id"], {"time_in_force": "GTD"}, {}, "trader", 422),
        "expiry for DAY": (order["id"], {"expire_at": later}, {}, "trader", 422),
        "client_order_id taken": (order["id"], {"client_order_id": "used-1"}, {}, "trader", 409),
        "another desk's": (fi.json()["id"], {"quantity": "60"}, {}, "trader", 404),
        "no such order": (10**9, {"quantity": "60"}, {}, "trader", 404),
    }
    for why, (order_id, body, extra, who, status) in refused.items():
        answer = await client.patch(f"{ORDERS}/{order_id}", json=body, headers=cast[who] | extra)
        assert answer.status_code == status, (why, answer.text)
        assert answer.headers["content-type"] == "application/problem+json", why
    assert await counts(owner_engine) == before
    assert used["client_order_id"] == "used-1"
    gtd = await client.patch(
        f"{ORDERS}/{order['id']}",
        json={"time_in_force": "GTD", "expire_at": later},
        headers=cast["trader"],
    )
    assert gtd.status_code == 201, gtd.text
    assert gtd.json()["time_in_force"] == "GTD"


async def test_nothing_of_the_amender_stays_on_the_pooled_connection(
    one_connection_app: tuple[FastAPI, httpx.AsyncClient], cast: Cast
) -> None:
    app, http = one_connection_app
    order = await http.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    amended = await http.patch(
        f"{ORDERS}/{order.json()['id']}", json={"quantity": "60"}, headers=cast["trader"]
    )
    assert amended.status_code == 201, amended.text
    await caller_left_on_the_one_connection(app)


async def test_an_amendment_behind_a_lock_is_answered_504_with_nothing_written(
    one_connection_app: tuple[FastAPI, httpx.AsyncClient], cast: Cast, owner_engine: AsyncEngine
) -> None:
    _, http = one_connection_app
    order = await http.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    path = f"{ORDERS}/{order.json()['id']}"
    before = await counts(owner_engine)
    async with orders_locked(owner_engine) as waiting:
        answer = await http.patch(path, json={"quantity": "60"}, headers=cast["trader"])
        still_waiting = await waiting("tradeops_amend_order")
    assert answer.status_code == 504, answer.text
    assert still_waiting == 0
    assert await counts(owner_engine) == before
    again = await http.patch(path, json={"quantity": "60"}, headers=cast["trader"])
    assert again.status_code == 201, again.text
