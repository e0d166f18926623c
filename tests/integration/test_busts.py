"""Issue 16.5: fill corrections by reversal. A bust records a reversing execution (the fill
is never changed), takes the order's fill state back, and rebuilds the position exactly as if
the fill had never been booked; positions can be read as of a booking time."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import Cast, approved_order, bearer, make_api_key
from tests.integration.test_mcp import mcp_over_http, problem_of
from tests.live import LiveServer
from tests.pages import sign_in
from tradeops.orders import expiry

ORDERS = "/api/v1/orders"
POSITION_FIELDS = ("quantity", "avg_cost", "cost_basis", "realized_pnl")


def a_fill(external_id: str, quantity: str, price: str) -> dict[str, Any]:
    return {
        "quantity": quantity,
        "price": price,
        "venue": "XNAS",
        "executed_at": "2026-11-23T14:30:05Z",
        "external_id": external_id,
    }


async def fill(
    client: httpx.AsyncClient, cast: Cast, order_id: int, external_id: str, qty: str, px: str
) -> int:
    response = await client.post(
        f"{ORDERS}/{order_id}/executions",
        json=a_fill(external_id, qty, px),
        headers=cast["admin"],
    )
    assert response.status_code == 201, response.text
    return int(response.json()["execution"]["id"])


async def bust(
    client: httpx.AsyncClient, cast: Cast, order_id: int, execution_id: int, who: str = "admin"
) -> httpx.Response:
    return await client.post(
        f"{ORDERS}/{order_id}/executions/{execution_id}/bust",
        json={"reason": "venue busted the trade"},
        headers=cast[who],
    )


async def position(
    client: httpx.AsyncClient, cast: Cast, client_id: str, as_of: str | None = None
) -> dict[str, Any]:
    params = {"client_id": client_id, **({"as_of": as_of} if as_of else {})}
    response = await client.get("/api/v1/positions", params=params, headers=cast["admin"])
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert len(items) == 1, items
    return {k: items[0][k] for k in POSITION_FIELDS}


async def book(
    client: httpx.AsyncClient,
    cast: Cast,
    engine: AsyncEngine,
    client_id: str,
    buys: list[tuple[str, str]],
    prefix: str,
) -> tuple[int, list[int], int]:
    """A BUY of 100 filled by `buys`, then a SELL of 70 filled at 195.37 (realizing P&L and,
    when the buys come to less than 70, crossing to short): the buy order, its fills' ids
    and the sell order."""
    buy = await approved_order(client, cast, engine, client_id=client_id, quantity=100)
    ids = [
        await fill(client, cast, buy, f"{prefix}-B{n}", qty, px) for n, (qty, px) in enumerate(buys)
    ]
    sell = await approved_order(
        client, cast, engine, client_id=client_id, side="SELL", quantity=70, price="195.01"
    )
    await fill(client, cast, sell, f"{prefix}-S", "70", "195.37")
    return buy, ids, sell


async def test_bust_takes_the_book_back_to_the_second_fill_alone_to_the_last_decimal(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """fill, fill, bust the first: the position, cost basis and realized P&L are those of a
    book with only the second fill (another client of the desk, booked just so)."""
    first, second = ("60", "190.13"), ("40", "192.47")
    buy, (first_id, _), _ = await book(
        client, cast, owner_engine, "CUST-1001", [first, second], "A"
    )
    busted = await bust(client, cast, buy, first_id)
    assert busted.status_code == 201, busted.text
    body = busted.json()
    assert body["execution"]["kind"] == "BUST"
    assert body["execution"]["reverses_execution_id"] == first_id
    assert body["execution"]["executed_at"] == "2026-11-23T14:30:05Z"
    assert body["execution"]["recorded_at"] != body["execution"]["executed_at"]
    assert body["order"]["status"] == "PARTIALLY_FILLED"
    assert (body["order"]["filled_quantity"], body["order"]["avg_fill_price"]) == ("40", "192.47")

    await book(client, cast, owner_engine, "CUST-1002", [second], "C")
    assert await position(client, cast, "CUST-1001") == await position(client, cast, "CUST-1002")
    assert (await position(client, cast, "CUST-1001"))["quantity"] == "-30"

    listed = await client.get(f"{ORDERS}/{buy}/executions", headers=cast["trader"])
    by_id = {e["id"]: e for e in listed.json()}
    assert by_id[first_id]["busted_by"] == body["execution"]["id"]
    assert by_id[first_id]["quantity"] == "60"  # the fill itself, unchanged
    events = await client.get(f"{ORDERS}/{buy}/events", headers=cast["trader"])
    last = events.json()["items"][-1]
    assert (last["type"], last["payload"]["execution_id"]) == ("FILL_BUSTED", first_id)


async def test_busting_every_fill_leaves_the_order_approved_and_the_client_flat(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine, quantity=10)
    execution_id = await fill(client, cast, order_id, "X-1", "10", "192.5")
    busted = await bust(client, cast, order_id, execution_id)
    assert busted.status_code == 201, busted.text
    assert busted.json()["order"]["status"] == "APPROVED"
    assert busted.json()["order"]["avg_fill_price"] is None
    assert await position(client, cast, "CUST-1001") == {
        "quantity": "0",
        "avg_cost": None,
        "cost_basis": "0",
        "realized_pnl": "0",
    }
    # A correction: the bust, then the corrected fill.
    await fill(client, cast, order_id, "X-1-corrected", "10", "192.25")
    assert (await position(client, cast, "CUST-1001"))["cost_basis"] == "1922.5"


async def test_a_fill_after_a_bust_is_averaged_with_the_standing_fills_alone(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """The order's average fill price after a bust and a new fill is the standing fills'
    (it was 501 here: the busted fill and its bust were both counted)."""
    order_id = await approved_order(client, cast, owner_engine, quantity=100)
    await fill(client, cast, order_id, "AVG-1", "10", "100")
    busted = await fill(client, cast, order_id, "AVG-2", "10", "104")
    assert (await bust(client, cast, order_id, busted)).status_code == 201
    answer = await client.post(
        f"{ORDERS}/{order_id}/executions",
        json=a_fill("AVG-3", "5", "101"),
        headers=cast["admin"],
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["order"]["avg_fill_price"] == "100.333333"  # (1000 + 505) / 15
    assert answer.json()["order"]["filled_quantity"] == "15"


async def test_a_fill_is_busted_once_and_a_bust_never(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    execution_id = await fill(client, cast, order_id, "X-2", "10", "192.5")
    bust_id = (await bust(client, cast, order_id, execution_id)).json()["execution"]["id"]
    again = await bust(client, cast, order_id, execution_id)
    assert again.status_code == 409 and again.json()["busted_by"] == bust_id
    of_bust = await bust(client, cast, order_id, bust_id)
    assert of_bust.status_code == 409, of_bust.text
    other = await approved_order(client, cast, owner_engine)
    assert (await bust(client, cast, other, execution_id)).status_code == 404
    # The database's twin: a second bust of the fill, a bust of another quantity.
    for values in (f"{execution_id}, 10", f"{execution_id}, 5"):
        with pytest.raises(DBAPIError):
            async with owner_engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO executions (order_id, desk_id, quantity, price, venue,"
                        " executed_at, external_id, recorded_by, kind, reverses_execution_id,"
                        " reason) SELECT order_id, desk_id, q, price, venue, executed_at,"
                        " 'x-' || q, recorded_by, 'BUST', e, 'r'"
                        f" FROM executions, (VALUES ({values})) v(e, q) WHERE id = :id"
                    ),
                    {"id": execution_id},
                )


async def test_an_order_is_replaced_once_and_a_fill_busted_once_by_the_database(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """An order replaced twice, or a fill busted twice, is refused by the unique constraints
    alone, under their own names: with the triggers and foreign keys out of the way
    (session_replication_role), the one change is accepted and the two are not."""
    first, second, third = [await approved_order(client, cast, owner_engine) for _ in range(3)]
    fills = [await fill(client, cast, first, f"U-{n}", "10", "192.5") for n in range(3)]
    # Each rule: the change that names `a` from the rows `b` and `c`, `a`, and (b, c).
    twice = {
        "uq_orders_replaces": (
            "UPDATE orders SET replaces = :a WHERE id IN (:b, :c)",
            first,
            (second, third),
        ),
        "uq_orders_replaced_by": (
            "UPDATE orders SET status = 'REPLACED', replaced_by = :a WHERE id IN (:b, :c)",
            first,
            (second, third),
        ),
        "uq_executions_reverses_execution_id": (
            "UPDATE executions SET kind = 'BUST', reason = 'r', reverses_execution_id = :a"
            " WHERE id IN (:b, :c)",
            fills[0],
            (fills[1], fills[2]),
        ),
    }
    for name, (sql, once, (b, c)) in twice.items():
        async with owner_engine.connect() as conn:
            await conn.execute(text("SET LOCAL session_replication_role = replica"))
            await conn.execute(text(sql), {"a": once, "b": b, "c": b})  # once: accepted
            await conn.rollback()
        with pytest.raises(DBAPIError, match=f'unique constraint "{name}"'):
            async with owner_engine.begin() as conn:
                await conn.execute(text("SET LOCAL session_replication_role = replica"))
                await conn.execute(text(sql), {"a": once, "b": b, "c": c})


async def test_positions_as_of_a_booking_time(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    first = await fill(client, cast, order_id, "T-1", "10", "190")
    await asyncio.sleep(0.05)
    async with owner_engine.connect() as conn:
        after_first = await conn.scalar(text("SELECT now()"))
    await asyncio.sleep(0.05)
    await fill(client, cast, order_id, "T-2", "20", "191")
    await asyncio.sleep(0.05)
    async with owner_engine.connect() as conn:
        after_second = await conn.scalar(text("SELECT now()"))
    await asyncio.sleep(0.05)
    assert (await bust(client, cast, order_id, first)).status_code == 201

    def at(moment: datetime) -> str:
        return moment.isoformat()

    then = await position(client, cast, "CUST-1001", at(after_first))
    assert (then["quantity"], then["cost_basis"]) == ("10", "1900")
    both = await position(client, cast, "CUST-1001", at(after_second))
    assert (both["quantity"], both["cost_basis"]) == ("30", "5720")
    now = await position(client, cast, "CUST-1001")
    assert await position(client, cast, "CUST-1001", "2100-01-01T00:00:00Z") == now
    assert (now["quantity"], now["cost_basis"]) == ("20", "3820")
    hidden = await client.get(
        "/api/v1/positions", params={"as_of": "2100-01-01T00:00:00Z"}, headers=cast["trader_fi"]
    )
    assert hidden.status_code == 200 and hidden.json()["items"] == []


async def test_the_approver_page_lists_fills_with_their_busts(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    execution_id = await fill(client, cast, order_id, "P-1", "10", "192.5")
    bust_id = (await bust(client, cast, order_id, execution_id)).json()["execution"]["id"]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as approver:
        assert (await sign_in(approver, "approver@test.bank")).status_code == 303
        html = (await approver.get(f"/ui/orders/{order_id}")).text
    assert f'id="execution-{execution_id}"' in html
    assert f'href="#execution-{bust_id}"' in html  # the fill links its bust
    assert f'href="#execution-{execution_id}"' in html  # and the bust its fill
    assert "venue busted the trade" in html


async def test_bust_latency_is_measured(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine, quantity=100)
    ids = [await fill(client, cast, order_id, f"L-{n}", "1", "192.5") for n in range(40)]
    timings = []
    for execution_id in ids:
        started = time.perf_counter()
        assert (await bust(client, cast, order_id, execution_id)).status_code == 201
        timings.append(time.perf_counter() - started)
    timings.sort()
    print(
        f"\nbust latency (40 busts, position of 40 fills): median {timings[20] * 1000:.1f} ms,"
        f" max {timings[-1] * 1000:.1f} ms"
    )


async def test_an_admin_key_busts_with_executions_write_and_never_across_desks(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    eq_order = await approved_order(client, cast, owner_engine)
    eq_fill = await fill(client, cast, eq_order, "K-1", "10", "192.5")
    fi_order = await approved_order(
        client, cast, owner_engine, maker="trader_fi", client_id="CUST-2001"
    )
    fi_fill = await fill(client, cast, fi_order, "K-2", "10", "192.5")
    _, eq_key = await make_api_key(
        owner_engine, "admin@test.bank", ["executions:write"], desks=["EQ-US"]
    )
    _, read_key = await make_api_key(owner_engine, "admin@test.bank", ["orders:read"])
    reason = {"reason": "booked twice"}
    url = f"{ORDERS}/{{}}/executions/{{}}/bust"
    refused = await client.post(
        url.format(eq_order, eq_fill), json=reason, headers=bearer(read_key)
    )
    assert refused.status_code == 403, refused.text
    across = await client.post(url.format(fi_order, fi_fill), json=reason, headers=bearer(eq_key))
    assert across.status_code == 404, across.text
    busted = await client.post(url.format(eq_order, eq_fill), json=reason, headers=bearer(eq_key))
    assert busted.status_code == 201, busted.text
    for who in ("trader", "approver", "risk", "agent"):
        response = await client.post(url.format(fi_order, fi_fill), json=reason, headers=cast[who])
        assert response.status_code == 403, who


async def test_a_bust_of_an_expired_orders_fill_keeps_it_expired(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    execution_id = await fill(client, cast, order_id, "E-1", "10", "192.5")
    async with owner_engine.begin() as conn:
        await conn.execute(
            text("UPDATE orders SET expire_at = now() - interval '1 second' WHERE id = :id"),
            {"id": order_id},
        )
    assert await expiry.expire_due_orders(app.state.db, 10) == [order_id]
    busted = await bust(client, cast, order_id, execution_id)
    assert busted.status_code == 201, busted.text
    order = busted.json()["order"]
    assert (order["status"], order["filled_quantity"], order["avg_fill_price"]) == (
        "EXPIRED",
        "0",
        None,
    )
    assert (await position(client, cast, "CUST-1001"))["quantity"] == "0"


async def test_an_admins_executions_key_busts_a_fill_over_mcp_and_an_agent_cannot(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """The bust over MCP is the same service as over HTTP: an admin's key with
    executions:write takes a fill back; the agent's key (orders, no executions) is refused."""
    order_id = await approved_order(client, cast, owner_engine)
    execution_id = await fill(client, cast, order_id, "MCP-1", "10", "192.5")
    _, admin_key = await make_api_key(owner_engine, "admin@test.bank", ["executions:write"])
    arguments = {"order_id": order_id, "execution_id": execution_id, "reason": "booked twice"}
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        refused = problem_of(await agent.call_tool("bust_execution", arguments))
    async with mcp_over_http(live_server, bearer(admin_key)) as connector:
        busted = (await connector.call_tool("bust_execution", arguments)).structured_content
        again = problem_of(await connector.call_tool("bust_execution", arguments))
    assert refused["status"] == 403, refused
    assert busted is not None
    assert busted["execution"]["kind"] == "BUST"
    assert busted["execution"]["reverses_execution_id"] == execution_id
    assert (busted["order"]["status"], busted["order"]["filled_quantity"]) == ("APPROVED", "0")
    assert again["status"] == 409, again
