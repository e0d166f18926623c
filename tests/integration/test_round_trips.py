"""Issue 15 item 1: the round trips to PostgreSQL of each hot endpoint, counted at the driver.

Every statement the request (and the tasks it starts) sends on an asyncpg connection, or
hands to the pool's runners to send alone (Database.fetch_alone), is counted: BEGIN (with
the transaction's limits, one simple query), each statement, COMMIT. Statements of background
tasks (the API key usage flush; the batches of wake-ups a new order hands over after its
commit, db/wakeups.py, sent in a context of their own) are not the request's: left out.
Each endpoint is called once before it is counted, so its statements are
prepared on the pooled connection, as they are under load (a first use adds a Parse/Describe
round trip per statement).
The counts are the table in docs/benchmarks.md; a change that adds a round trip to a hot
path has to change both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any

import httpx
import pytest
from asyncpg.connection import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import SEED_ORDER, Cast, approved_order, reviewed_order
from tradeops.db.pool import Database

ORDERS = "/api/v1/orders"
SNAPSHOT = {"symbol": "AAPL", "price": "192.55", "as_of": "2026-11-23T14:30:00Z"}


# The request's statements: set in the test's context, which the request and the tasks it
# starts (asyncio.wait_for's) inherit, and background tasks started earlier do not.
_sent: ContextVar[list[str] | None] = ContextVar("sent", default=None)


class Statements:
    """The SQL a request sends through asyncpg."""

    def note(self, sql: str) -> None:
        sent = _sent.get()
        if sent is not None:
            sent.append(" ".join(sql.split())[:120])

    async def during(self, request: Awaitable[httpx.Response]) -> tuple[httpx.Response, list[str]]:
        sent: list[str] = []
        token = _sent.set(sent)
        try:
            response = await request
        finally:
            _sent.reset(token)
        return response, sent


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[Statements]:
    counted = Statements()
    execute, run, run_many = Connection.execute, Connection._execute, Connection._executemany

    async def simple_query(self: Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        if not args:  # with arguments, execute() goes through _execute, counted there
            counted.note(query)
        return await execute(self, query, *args, **kwargs)

    async def extended_query(self: Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        counted.note(query)
        return await run(self, query, *args, **kwargs)

    async def many(self: Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        counted.note(query)
        return await run_many(self, query, *args, **kwargs)

    # A statement sent alone goes out from one of the pool's runners, in a context of its
    # own: counted as the request hands it over.
    async def alone(self: Database, sql: str, *args: Any) -> Any:
        counted.note(sql)
        return await fetch_alone(self, sql, *args)

    fetch_alone = Database.fetch_alone
    monkeypatch.setattr(Database, "fetch_alone", alone)
    monkeypatch.setattr(Connection, "execute", simple_query)
    monkeypatch.setattr(Connection, "_execute", extended_query)
    monkeypatch.setattr(Connection, "_executemany", many)
    yield counted


async def submitted(client: httpx.AsyncClient, cast: Cast) -> int:
    response = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


Call = Callable[[], Awaitable[httpx.Response]]


async def count(statements: Statements, make_call: Callable[[], Awaitable[Call]]) -> list[str]:
    """The statements of the endpoint's second call (the first prepares them)."""
    for _ in range(2):
        call = await make_call()
        response, sent = await statements.during(call())
        assert response.status_code < 300, response.text
    return sent


# Per endpoint: the statements of one call, in order. "authenticate" is one statement: it
# checks the credential and sets the request context (role, desks, request id).
EXPECTED = {
    "GET /orders/{id}": 1,  # one statement: authenticate, set the context, read (0019)
    "GET /orders:by_client_order_id": 1,  # one statement: authenticate, your order (0046)
    "GET /orders": 1,  # one statement: authenticate, set the context, the page (0041)
    # The same statement: the client, symbol and desk by their ids, then the page (0041).
    "GET /orders with a client, symbol and desk": 1,
    # One statement: authenticate, set the context, check who may submit, then intake with
    # its events and risk job (0025).
    "POST /orders": 1,
    # One statement: authenticate, set the context, check who may submit, reserve the key,
    # intake with its events and risk job, the order's document stored under the key (0038).
    "POST /orders with an Idempotency-Key": 1,
    # One statement each: authenticate, set the context, check who may decide, lock the
    # order, (an approval's row), the transition with its events, the order's document (0035).
    "POST /orders/{id}/review": 1,
    "POST /orders/{id}/approve": 1,
    "POST /orders/{id}/cancel": 1,
    # One statement: authenticate, set the context, check who may submit, lock the order,
    # the replacement and the order REPLACED with their events, the new order's document
    # (0040).
    "PATCH /orders/{id}": 1,
    # One statement each: authenticate, set the context, reserve the key, the decision or
    # the amendment as above, its response stored under the key (0043).
    "POST /orders/{id}/review with an Idempotency-Key": 1,
    "PATCH /orders/{id} with an Idempotency-Key": 1,
    # One statement: authenticate, set the context, check who may record fills, lock the
    # order, the fill's context (a resend?), lock the position, the execution and the
    # order's fill state, the position booked (0039).
    "POST /orders/{id}/executions": 1,
    "GET /orders/{id}/events": 1,  # one statement: authenticate, the order's events (0037)
    "GET /clients/{id}/portfolio": 1,  # one statement: authenticate, the document (0019)
    "GET /market-data/{symbol}": 1,  # one statement: authenticate, the latest price (0045)
    # One statement: authenticate, set the context, check who may publish, the batch, its
    # audit event (0036).
    "POST /market-data/snapshots": 1,
    "GET /health/ready": 1,  # one statement: writable, schema head
    # A retried submission, one statement: the key it could not reserve is read instead of
    # the order made, and its stored response answered (0038).
    "POST /orders, replayed (Idempotency-Key)": 1,
}


async def test_each_hot_endpoint_makes_the_documented_round_trips(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, statements: Statements
) -> None:
    trader, approver, admin = cast["trader"], cast["approver"], cast["admin"]
    replayed = trader | {"Idempotency-Key": "round-trips"}
    fresh_keys = (f"round-trips-{n}" for n in range(1, 20))
    order_id = await submitted(client, cast)
    own = await client.post(
        ORDERS, json={**SEED_ORDER, "client_order_id": "round-trips-own"}, headers=trader
    )
    assert own.status_code == 201, own.text
    prices = iter(range(1, 10))

    async def fixed(call: Call) -> Call:
        return call

    async def to_review() -> Call:
        order = await submitted(client, cast)
        return lambda: client.post(f"{ORDERS}/{order}/review", headers=cast["trader2"])

    async def to_approve() -> Call:
        order = await reviewed_order(client, cast, owner_engine)
        return lambda: client.post(f"{ORDERS}/{order}/approve", headers=approver)

    async def to_cancel() -> Call:
        order = await submitted(client, cast)
        return lambda: client.post(f"{ORDERS}/{order}/cancel", headers=trader)

    async def to_fill() -> Call:
        order = await approved_order(client, cast, owner_engine)
        fill = {
            "quantity": "20",
            "price": "192.50",
            "venue": "XNAS",
            "executed_at": "2026-11-23T14:30:05Z",
            "external_id": f"XNAS-{order}",
        }
        return lambda: client.post(f"{ORDERS}/{order}/executions", json=fill, headers=admin)

    async def to_amend() -> Call:
        order = await submitted(client, cast)
        return lambda: client.patch(f"{ORDERS}/{order}", json={"quantity": "60"}, headers=trader)

    async def to_review_keyed() -> Call:
        order, keyed = await submitted(client, cast), {"Idempotency-Key": next(fresh_keys)}
        return lambda: client.post(f"{ORDERS}/{order}/review", headers=cast["trader2"] | keyed)

    async def to_amend_keyed() -> Call:
        order, keyed = await submitted(client, cast), {"Idempotency-Key": next(fresh_keys)}
        return lambda: client.patch(
            f"{ORDERS}/{order}", json={"quantity": "60"}, headers=trader | keyed
        )

    async def to_publish() -> Call:
        snapshot = {**SNAPSHOT, "source": f"feed-{next(prices)}"}
        return lambda: client.post(
            "/api/v1/market-data/snapshots", json={"snapshots": [snapshot]}, headers=admin
        )

    calls: dict[str, Callable[[], Awaitable[Call]]] = {
        "GET /orders/{id}": lambda: fixed(
            lambda: client.get(f"{ORDERS}/{order_id}", headers=trader)
        ),
        "GET /orders:by_client_order_id": lambda: fixed(
            lambda: client.get(
                f"{ORDERS}:by_client_order_id",
                params={"client_order_id": "round-trips-own"},
                headers=trader,
            )
        ),
        "GET /orders": lambda: fixed(lambda: client.get(ORDERS, headers=trader)),
        "GET /orders with a client, symbol and desk": lambda: fixed(
            lambda: client.get(
                ORDERS,
                params={"client_id": "CUST-1001", "symbol": "AAPL", "desk": "EQ-US"},
                headers=trader,
            )
        ),
        "POST /orders": lambda: fixed(lambda: client.post(ORDERS, json=SEED_ORDER, headers=trader)),
        "POST /orders with an Idempotency-Key": lambda: fixed(
            lambda: client.post(
                ORDERS, json=SEED_ORDER, headers=trader | {"Idempotency-Key": next(fresh_keys)}
            )
        ),
        "POST /orders/{id}/review": to_review,
        "POST /orders/{id}/approve": to_approve,
        "POST /orders/{id}/cancel": to_cancel,
        "PATCH /orders/{id}": to_amend,
        "POST /orders/{id}/review with an Idempotency-Key": to_review_keyed,
        "PATCH /orders/{id} with an Idempotency-Key": to_amend_keyed,
        "POST /orders/{id}/executions": to_fill,
        "GET /orders/{id}/events": lambda: fixed(
            lambda: client.get(f"{ORDERS}/{order_id}/events", headers=trader)
        ),
        "GET /clients/{id}/portfolio": lambda: fixed(
            lambda: client.get("/api/v1/clients/CUST-1001/portfolio", headers=trader)
        ),
        "POST /market-data/snapshots": to_publish,
        "GET /market-data/{symbol}": lambda: fixed(
            lambda: client.get("/api/v1/market-data/aapl", headers=trader)
        ),
        "GET /health/ready": lambda: fixed(lambda: client.get("/health/ready")),
        "POST /orders, replayed (Idempotency-Key)": lambda: fixed(
            lambda: client.post(ORDERS, json=SEED_ORDER, headers=replayed)
        ),
    }
    measured = {name: await count(statements, make_call) for name, make_call in calls.items()}
    assert {name: len(sent) for name, sent in measured.items()} == EXPECTED, measured
