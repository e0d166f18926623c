"""Issue 15: a fill (POST /orders/{id}/executions) in one statement (migration 0039), with
every property of the transaction it replaced.

- The installed function runs the transaction's statements exactly as the code writes them.
- Its arithmetic is positions.accounting's and decimals.divide_half_even's, to the last
  decimal (average cost, realized P&L, a fill past flat, half-even ties).
- A run of fills in one statement books what the same run in a transaction books: the
  executions, the orders' fill states and history, the positions, the audit trail.
- A fill it does not record (a refusal, a resend, another desk, a caller who may not) writes
  nothing and is answered by the transaction, as documented.
- Nothing of the caller stays on the pooled connection; a fill behind a lock is answered 504
  with nothing written.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import httpx
from fastapi import FastAPI
from pytest import MonkeyPatch
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import (
    Cast,
    approved_order,
    bearer,
    caller_left_on_the_one_connection,
    fills_in_a_transaction,
    installed_source,
    make_api_key,
    orders_locked,
    row_counts,
)
from tests.integration.test_busts import a_fill
from tradeops.decimals import divide_half_even
from tradeops.executions.repository import record_fill_function
from tradeops.positions.accounting import Holding, apply_fill

ORDERS = "/api/v1/orders"
TABLES = ("executions", "positions", "order_events", "audit_events")


async def counts(engine: AsyncEngine) -> dict[str, int]:
    return await row_counts(engine, TABLES)


async def test_the_installed_function_runs_the_fills_statements_as_the_code_writes_them(
    owner_engine: AsyncEngine,
) -> None:
    """The migration holds a copy of each statement of a fill: a change to one of them
    without a migration that installs the function again fails here."""
    source = await installed_source(owner_engine, "tradeops_record_fill")
    installed = " ".join(source.split())
    for statement in record_fill_function():
        assert " ".join(statement.split()) + ";" in installed, statement


def holdings(seed: int, count: int) -> list[tuple[Holding, Decimal, Decimal]]:
    """Holdings and fills on both sides, crossing flat, closing in full and in part, with
    quantities and prices of up to 6 decimals: `count` drawn by `seed`, and the edge cases."""
    draw = random.Random(seed)

    def amount(most: int) -> Decimal:
        return Decimal(draw.randint(1, most * 10**6)).scaleb(-6)

    cases = [
        (Holding(Decimal(3), Decimal(32), Decimal(0)), Decimal(-1), Decimal(12)),
        (Holding(Decimal(10), Decimal(1000), Decimal(0)), Decimal(-15), Decimal(110)),
        (Holding(Decimal(-4), Decimal(-400), Decimal(5)), Decimal(4), Decimal(90)),
        (Holding(Decimal(0), Decimal(0), Decimal(0)), Decimal(-7), Decimal("0.000001")),
    ]
    for _ in range(count):
        quantity = amount(1000) * draw.choice((1, -1))
        cost = quantity * amount(500)
        fill = amount(2000) * draw.choice((1, -1))
        cases.append((Holding(quantity, cost, amount(10_000) - 5000), fill, amount(500)))
    return cases


async def test_a_fills_arithmetic_in_postgresql_is_positions_accounting(
    owner_engine: AsyncEngine,
) -> None:
    """tradeops_apply_fill and tradeops_divide_half_even against apply_fill and
    divide_half_even, on 2,000 drawn cases and the edge cases, all at once."""
    cases = holdings(seed=15, count=2000)
    async with owner_engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        rows = await raw.fetch(
            "SELECT f.* FROM unnest($1::numeric[], $2::numeric[], $3::numeric[],"
            " $4::numeric[], $5::numeric[]) WITH ORDINALITY AS c(q, cost, pnl, fq, fp, n)"
            " CROSS JOIN LATERAL tradeops_apply_fill(q, cost, pnl, fq, fp) AS f ORDER BY n",
            [h.quantity for h, _, _ in cases],
            [h.cost_basis for h, _, _ in cases],
            [h.realized_pnl for h, _, _ in cases],
            [fill for _, fill, _ in cases],
            [price for _, _, price in cases],
        )
        assert [Holding(*row) for row in rows] == [apply_fill(*case) for case in cases]
        # Ties, both signs, and the drawn holdings' average costs at 10 places.
        divisions = [
            (Decimal(n), Decimal(d), p) for n in (-7, -5, 5, 7) for d, p in ((2, 0), (8, 2))
        ]
        divisions += [(h.cost_basis, h.quantity, 10) for h, _, _ in cases if h.quantity]
        quotients = await raw.fetch(
            "SELECT tradeops_divide_half_even(n, d, p) AS q FROM unnest($1::numeric[],"
            " $2::numeric[], $3::integer[]) WITH ORDINALITY AS c(n, d, p, i) ORDER BY i",
            *zip(*divisions, strict=True),
        )
        assert [row["q"] for row in quotients] == [divide_half_even(*d) for d in divisions]


async def book(
    client: httpx.AsyncClient, cast: Cast, engine: AsyncEngine, client_id: str, prefix: str
) -> list[httpx.Response]:
    """A BUY of 100 filled in three parts (one of them averaged at a tie), then a SELL of 130
    filled past flat: every answer."""
    buy = await approved_order(client, cast, engine, client_id=client_id, quantity=100)
    sell = await approved_order(
        client, cast, engine, client_id=client_id, side="SELL", quantity=130, price="190.01"
    )
    fills = [
        (buy, "B1", "33", "192.123457"),
        (buy, "B2", "33", "192.123456"),
        (buy, "B3", "34", "191.5"),
        (sell, "S1", "50", "195.37"),
        (sell, "S2", "80", "190.015"),
    ]
    return [
        await client.post(
            f"{ORDERS}/{order_id}/executions",
            json=a_fill(f"{prefix}-{name}", quantity, price),
            headers=cast["admin"],
        )
        for order_id, name, quantity, price in fills
    ]


BOOKED = {
    "positions": "SELECT p.quantity, p.avg_cost, p.cost_basis, p.realized_pnl, p.version"
    " FROM positions p"
    " JOIN clients c ON c.id = p.client_id WHERE c.external_id = :client",
    "orders": "SELECT o.side, o.status, o.filled_quantity, o.avg_fill_price, o.version"
    " FROM orders o"
    " JOIN clients c ON c.id = o.client_id WHERE c.external_id = :client ORDER BY o.id",
    "events": "SELECT e.seq, e.type, e.payload - 'execution_id' - 'request_id' - 'external_id'"
    " AS payload"
    " FROM order_events e JOIN orders o ON o.id = e.order_id JOIN clients c"
    " ON c.id = o.client_id WHERE c.external_id = :client ORDER BY o.id, e.seq",
    "audit": "SELECT action, entity, after - 'id' - 'order_id' - 'client_id' - 'updated_at'"
    " - 'recorded_at' - 'external_id' - 'created_at' - 'position_key' - 'execution_id'"
    " - 'expire_at' - 'client_order_id' AS after FROM audit_events"
    " WHERE entity IN ('execution', 'position') AND (entity_id LIKE :client || ':%'"
    " OR entity_id IN (SELECT e.id::text FROM executions e JOIN orders o ON o.id = e.order_id"
    " JOIN clients c ON c.id = o.client_id WHERE c.external_id = :client)) ORDER BY id",
}


async def booked(engine: AsyncEngine, client_id: str) -> dict[str, list[dict[str, Any]]]:
    async with engine.connect() as conn:
        return {
            name: [
                dict(row)
                for row in (await conn.execute(text(sql), {"client": client_id})).mappings()
            ]
            for name, sql in BOOKED.items()
        }


async def test_fills_in_one_statement_book_what_fills_in_a_transaction_book(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, monkeypatch: MonkeyPatch
) -> None:
    """The same run of fills for two clients of a desk, one in one statement each, the other
    in transactions: the same answers and the same books, but for ids and times."""
    alone = await book(client, cast, owner_engine, "CUST-1001", "ALONE")
    with monkeypatch.context() as declining:
        fills_in_a_transaction(declining)
        in_transaction = await book(client, cast, owner_engine, "CUST-1002", "TX")
    for one, other in zip(alone, in_transaction, strict=True):
        assert one.status_code == other.status_code == 201, (one.text, other.text)
        shown, reference = one.json(), other.json()
        for answer in (shown, reference):
            answer["order"].pop("id")
            for varies in ("id", "order_id", "external_id", "recorded_at"):
                answer["execution"].pop(varies)
        assert shown == reference
    assert alone[-1].json()["order"]["status"] == "FILLED"
    books = await booked(owner_engine, "CUST-1001")
    assert books == await booked(owner_engine, "CUST-1002")
    assert books["positions"][0]["quantity"] == Decimal(-30)  # past flat: short 30
    assert len(books["audit"]) == 10  # each fill's execution and position


async def test_a_fill_not_recorded_alone_writes_nothing_and_is_answered_as_before(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """Refusals the one statement leaves to the transaction: nothing is written (no
    position opened for the client either), and each answer is the documented one."""
    limit = await approved_order(client, cast, owner_engine, quantity=10, price="192.55")
    other_desk = await approved_order(
        client, cast, owner_engine, maker="trader_fi", client_id="CUST-2001"
    )
    pending = (
        await client.post(
            ORDERS,
            json={
                "client_id": "CUST-1001",
                "symbol": "MSFT",
                "side": "BUY",
                "quantity": "5",
                "price": "400",
            },
            headers=cast["trader"],
        )
    ).json()
    _, narrowed = await make_api_key(
        owner_engine, "admin@test.bank", ["executions:write"], desks=["EQ-US"]
    )
    before = await counts(owner_engine)
    refused = {
        "overfill": (limit, a_fill("R-1", "20", "192"), cast["admin"], 422),
        "off the lot": (limit, a_fill("R-2", "0.5", "192"), cast["admin"], 422),
        "through the limit": (limit, a_fill("R-3", "5", "193"), cast["admin"], 422),
        "not approved": (pending["id"], a_fill("R-4", "5", "400"), cast["admin"], 409),
        "no such order": (10**9, a_fill("R-5", "5", "192"), cast["admin"], 404),
        "may not": (limit, a_fill("R-6", "5", "192"), cast["trader"], 403),
        "another desk's": (other_desk, a_fill("R-7", "5", "192"), bearer(narrowed), 404),
    }
    for why, (order_id, fill, headers, status) in refused.items():
        answer = await client.post(f"{ORDERS}/{order_id}/executions", json=fill, headers=headers)
        assert answer.status_code == status, (why, answer.text)
        assert answer.headers["content-type"] == "application/problem+json", why
    assert await counts(owner_engine) == before
    first = await client.post(
        f"{ORDERS}/{limit}/executions", json=a_fill("R-8", "5", "192"), headers=cast["admin"]
    )
    resent = await client.post(
        f"{ORDERS}/{limit}/executions", json=a_fill("R-8", "5", "192"), headers=cast["admin"]
    )
    assert (first.status_code, resent.status_code) == (201, 200), resent.text
    assert resent.headers["idempotent-replayed"] == "true"
    assert resent.json()["execution"] == first.json()["execution"]


async def test_nothing_of_the_filler_stays_on_the_pooled_connection(
    one_connection_app: tuple[FastAPI, httpx.AsyncClient], cast: Cast, owner_engine: AsyncEngine
) -> None:
    app, http = one_connection_app
    order_id = await approved_order(http, cast, owner_engine)
    recorded = await http.post(
        f"{ORDERS}/{order_id}/executions", json=a_fill("P-1", "20", "192"), headers=cast["admin"]
    )
    assert recorded.status_code == 201, recorded.text
    await caller_left_on_the_one_connection(app)


async def test_a_fill_behind_a_lock_is_answered_504_with_nothing_written(
    one_connection_app: tuple[FastAPI, httpx.AsyncClient], cast: Cast, owner_engine: AsyncEngine
) -> None:
    _, http = one_connection_app
    order_id = await approved_order(http, cast, owner_engine)
    before = await counts(owner_engine)
    path = f"{ORDERS}/{order_id}/executions"
    async with orders_locked(owner_engine) as waiting:
        answer = await http.post(path, json=a_fill("L-1", "20", "192"), headers=cast["admin"])
        still_waiting = await waiting("tradeops_record_fill")
    assert answer.status_code == 504, answer.text
    assert answer.json()["type"].endswith("/database-timeout")
    assert still_waiting == 0
    assert await counts(owner_engine) == before
    again = await http.post(path, json=a_fill("L-1", "20", "192"), headers=cast["admin"])
    assert again.status_code == 201, again.text
