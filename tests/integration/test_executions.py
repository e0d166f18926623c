"""Fills: what they do to the order, resent fills, the refusals, who may record them, and
concurrent fills of one order and of one position."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import (
    SEED_ORDER,
    Cast,
    approved_order,
    bearer,
    make_api_key,
    stored_api_key,
)
from tradeops.db.uow import sqlstate_of
from tradeops.errors import InvalidRequest

ORDERS = "/api/v1/orders"
PROBLEMS = "https://tradeops.dev/problems/"


def a_fill(external_id: str = "XNAS-1", **changes: Any) -> dict[str, Any]:
    return {
        "quantity": "20",
        "price": "192.50",
        "venue": "XNAS",
        "executed_at": "2026-11-23T14:30:05.125Z",
        "external_id": external_id,
        **changes,
    }


async def record(
    client: httpx.AsyncClient, order_id: int, headers: dict[str, str], **fill: Any
) -> httpx.Response:
    return await client.post(
        f"{ORDERS}/{order_id}/executions", json=a_fill(**fill), headers=headers
    )


async def position_of(client: httpx.AsyncClient, cast: Cast, symbol: str = "AAPL") -> Any:
    page = await client.get(
        "/api/v1/positions",
        params={"client_id": "CUST-1001", "symbol": symbol},
        headers=cast["risk"],
    )
    assert page.status_code == 200, page.text
    items = page.json()["items"]
    return items[0] if items else None


async def test_first_fill_partially_fills_the_order_and_opens_the_position(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)  # BUY 50 AAPL @ 192.55
    recorded = await record(client, order_id, cast["admin"])
    assert recorded.status_code == 201, recorded.text
    body = recorded.json()
    execution, order = body["execution"], body["order"]
    assert {k: execution[k] for k in ("order_id", "external_id", "quantity", "price")} == {
        "order_id": order_id,
        "external_id": "XNAS-1",
        "quantity": "20",
        "price": "192.5",
    }
    assert execution["venue"] == "XNAS"
    assert execution["recorded_by"] == "admin@test.bank"
    assert execution["executed_at"].startswith("2026-11-23T14:30:05.125")
    assert (order["status"], order["filled_quantity"], order["avg_fill_price"]) == (
        "PARTIALLY_FILLED",
        "20",
        "192.5",
    )
    assert order["version"] == 4  # created, reviewed, approved, filled
    position = await position_of(client, cast)
    assert (position["quantity"], position["avg_cost"], position["cost_basis"]) == (
        "20",
        "192.5",
        "3850",
    )
    listed = await client.get(f"{ORDERS}/{order_id}/executions", headers=cast["trader"])
    assert [e["id"] for e in listed.json()] == [execution["id"]]


async def test_the_last_fill_fills_the_order_at_the_weighted_average_price(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    assert (await record(client, order_id, cast["admin"])).status_code == 201
    last = await record(
        client, order_id, cast["admin"], external_id="XNAS-2", quantity="30", price="192.55"
    )
    assert last.status_code == 201, last.text
    order = last.json()["order"]
    # (20 * 192.50 + 30 * 192.55) / 50 = (3850 + 5776.5) / 50
    assert (order["status"], order["filled_quantity"], order["avg_fill_price"]) == (
        "FILLED",
        "50",
        "192.53",
    )
    events = (await client.get(f"{ORDERS}/{order_id}/events", headers=cast["trader"])).json()[
        "items"
    ]
    assert [(e["seq"], e["type"]) for e in events] == [
        (1, "CREATED"),
        (2, "REVIEWED"),
        (3, "APPROVED"),
        (4, "PARTIALLY_FILLED"),
        (5, "FILLED"),
    ]
    assert events[4]["payload"]["external_id"] == "XNAS-2"
    assert events[4]["payload"]["quantity"] == "30"
    assert events[4]["actor"] == f"user:{cast.ids['admin']}"
    assert (await position_of(client, cast))["quantity"] == "50"


async def test_average_fill_price_rounds_half_even_to_six_places(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine, quantity=3, price=200)
    await record(client, order_id, cast["admin"], quantity="1", price="100")
    done = await record(
        client, order_id, cast["admin"], external_id="X-2", quantity="2", price="100.01"
    )
    # (100 + 200.02) / 3 = 100.006666…
    assert done.json()["order"]["avg_fill_price"] == "100.006667"


async def test_a_resent_fill_answers_the_recorded_one_and_changes_nothing(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    first = await record(client, order_id, cast["admin"])
    again = await record(client, order_id, cast["admin"])
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["execution"] == first.json()["execution"]
    assert again.json()["order"]["version"] == first.json()["order"]["version"]
    listed = await client.get(f"{ORDERS}/{order_id}/executions", headers=cast["risk"])
    assert len(listed.json()) == 1
    assert (await position_of(client, cast))["quantity"] == "20"


async def test_a_resent_fill_of_a_filled_order_is_still_answered_as_recorded(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    first = await record(client, order_id, cast["admin"], quantity="50")
    assert first.json()["order"]["status"] == "FILLED"
    again = await record(client, order_id, cast["admin"], quantity="50")
    assert again.status_code == 200, again.text


@pytest.mark.parametrize(
    "changes",
    [
        {"quantity": "10"},
        {"price": "192.4"},
        {"executed_at": "2026-11-23T15:00:00Z"},
    ],
)
async def test_the_same_external_id_with_other_details_is_a_conflict(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, changes: dict[str, str]
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    execution_id = (await record(client, order_id, cast["admin"])).json()["execution"]["id"]
    clash = await record(client, order_id, cast["admin"], **changes)
    assert clash.status_code == 409, clash.text
    assert clash.json()["type"] == PROBLEMS + "execution-conflict"
    assert clash.json()["execution_id"] == execution_id
    assert (await position_of(client, cast))["quantity"] == "20"


async def test_an_external_id_is_one_fill_across_orders(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    first = await approved_order(client, cast, owner_engine)
    second = await approved_order(client, cast, owner_engine)
    assert (await record(client, first, cast["admin"])).status_code == 201
    clash = await record(client, second, cast["admin"])
    assert clash.status_code == 409
    assert clash.json()["type"] == PROBLEMS + "execution-conflict"


async def test_two_venues_may_use_the_same_fill_id(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    assert (await record(client, order_id, cast["admin"], venue="XNAS")).status_code == 201
    other_venue = await record(client, order_id, cast["admin"], venue="xlon")
    assert other_venue.status_code == 201, other_venue.text
    assert other_venue.json()["execution"]["venue"] == "XLON"
    assert (await position_of(client, cast))["quantity"] == "40"


async def test_an_overfill_is_refused_with_what_is_left(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    too_much = await record(client, order_id, cast["admin"], quantity="51")
    assert too_much.status_code == 422
    assert too_much.json()["type"] == PROBLEMS + "overfill"
    assert too_much.json()["remaining_quantity"] == "50"
    await record(client, order_id, cast["admin"], quantity="20")
    after_some = await record(client, order_id, cast["admin"], external_id="X-2", quantity="31")
    assert (after_some.status_code, after_some.json()["remaining_quantity"]) == (422, "30")
    assert after_some.json()["errors"][0]["field"] == "body.quantity"


@pytest.mark.parametrize(
    ("side", "price", "status"),
    [
        ("BUY", "192.56", 422),
        ("BUY", "192.55", 201),
        ("SELL", "192.54", 422),
        ("SELL", "192.55", 201),
    ],
)
async def test_a_limit_order_fills_only_at_its_limit_or_better(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    side: str,
    price: str,
    status: int,
) -> None:
    order_id = await approved_order(client, cast, owner_engine, side=side)
    response = await record(client, order_id, cast["admin"], price=price)
    assert response.status_code == status, response.text
    if status == 422:
        assert response.json()["type"] == PROBLEMS + "fill-outside-limit"


async def test_a_market_order_fills_at_any_price(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine, price=None, order_type="MARKET")
    assert (await record(client, order_id, cast["admin"], price="999.99")).status_code == 201


async def test_a_fill_off_the_lot_size_is_refused(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    response = await record(client, order_id, cast["admin"], quantity="0.5")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.quantity"


@pytest.mark.parametrize(
    "body",
    [
        a_fill(quantity="0"),
        a_fill(price="-1"),
        a_fill(venue=""),
        a_fill(external_id="has space"),
        a_fill(executed_at="2026-11-23T14:30:05"),  # no time zone
        {k: v for k, v in a_fill().items() if k != "external_id"},
    ],
)
async def test_an_invalid_fill_is_a_422(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, body: dict[str, Any]
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    response = await client.post(
        f"{ORDERS}/{order_id}/executions", json=body, headers=cast["admin"]
    )
    assert response.status_code == 422, response.text


async def test_only_approved_or_partially_filled_orders_take_fills(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    pending = await client.post(
        ORDERS,
        json={**SEED_ORDER, "price": None, "order_type": "MARKET"},
        headers=cast["trader"],
    )
    refused = await record(client, pending.json()["id"], cast["admin"])
    assert refused.status_code == 409
    assert (refused.json()["type"], refused.json()["current_status"]) == (
        PROBLEMS + "order-not-fillable",
        "PENDING",
    )
    filled = await approved_order(client, cast, owner_engine)
    await record(client, filled, cast["admin"], quantity="50")
    more = await record(client, filled, cast["admin"], external_id="X-2", quantity="1")
    assert (more.status_code, more.json()["current_status"]) == (409, "FILLED")
    cancelled = await approved_order(client, cast, owner_engine)
    await client.post(f"{ORDERS}/{cancelled}/cancel", headers=cast["trader"])
    assert (await record(client, cancelled, cast["admin"], external_id="X-3")).status_code == 409


async def test_a_fill_writes_its_audit_events_and_the_trail_verifies(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    execution_id = (await record(client, order_id, cast["admin"])).json()["execution"]["id"]
    events = await client.get("/api/v1/audit/events", params={"limit": 100}, headers=cast["risk"])
    by_action = {e["action"]: e for e in events.json()["items"]}
    assert by_action["execution.recorded"]["entity_id"] == str(execution_id)
    filled = by_action["order.partially_filled"]
    assert (filled["before"]["status"], filled["after"]["status"]) == (
        "APPROVED",
        "PARTIALLY_FILLED",
    )
    position = by_action["position.changed"]
    assert position["entity_id"] == "CUST-1001:AAPL"
    assert position["after"]["execution_id"] == execution_id
    assert Decimal(str(position["after"]["quantity"])) == 20
    verified = await client.post("/api/v1/audit/verify", headers=cast["risk"])
    assert verified.json()["ok"] is True, verified.json()


# --- who may record fills --------------------------------------------------------------------


async def test_an_admins_connector_key_with_executions_write_records_fills(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    key_id, key = await make_api_key(owner_engine, "admin@test.bank", ["executions:write"])
    recorded = await record(client, order_id, bearer(key))
    assert recorded.status_code == 201, recorded.text
    _, without_scope = await make_api_key(owner_engine, "admin@test.bank", ["orders:read"])
    refused = await record(client, order_id, bearer(without_scope), external_id="X-2")
    assert refused.status_code == 403
    events = await client.get(
        "/api/v1/audit/events", params={"action": "execution.recorded"}, headers=cast["risk"]
    )
    assert events.json()["items"][0]["actor"] == f"user:{cast.ids['admin']}/key:{key_id}"


async def test_no_one_but_operations_records_fills_whatever_the_key_scope(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    for owner in ("trader@test.bank", "agent@test.bank", "risk@test.bank"):
        with pytest.raises(InvalidRequest, match="can never use executions:write"):
            await make_api_key(owner_engine, owner, ["executions:write"])
        # A key that holds the scope anyway (made before that check) is refused when used.
        key = await stored_api_key(owner_engine, owner, ["executions:write"])
        assert (await record(client, order_id, bearer(key))).status_code == 403, owner
    for who in ("trader", "approver", "risk", "agent"):
        assert (await record(client, order_id, cast[who])).status_code == 403, who


async def test_an_admin_key_narrowed_to_a_desk_cannot_fill_another_desks_order(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    fi_order = await approved_order(
        client, cast, owner_engine, maker="trader_fi", client_id="CUST-2001"
    )
    _, key = await make_api_key(
        owner_engine, "admin@test.bank", ["executions:write"], desks=["EQ-US"]
    )
    assert (await record(client, fi_order, bearer(key))).status_code == 404
    assert (await record(client, fi_order, cast["admin"])).status_code == 201


async def test_an_external_id_taken_on_another_desk_is_a_conflict_that_tells_nothing_more(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    fi_order = await approved_order(
        client, cast, owner_engine, maker="trader_fi", client_id="CUST-2001"
    )
    assert (await record(client, fi_order, cast["admin"])).status_code == 201
    eq_order = await approved_order(client, cast, owner_engine)
    _, key = await make_api_key(
        owner_engine, "admin@test.bank", ["executions:write"], desks=["EQ-US"]
    )
    clash = await record(client, eq_order, bearer(key))
    assert clash.status_code == 409
    assert "execution_id" not in clash.json() and "order_id" not in clash.json()
    assert (await position_of(client, cast)) is None


async def test_executions_of_another_desks_order_are_not_found(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    await record(client, order_id, cast["admin"])
    assert (
        await client.get(f"{ORDERS}/{order_id}/executions", headers=cast["trader_fi"])
    ).status_code == 404
    assert (
        await client.get(f"{ORDERS}/999999/executions", headers=cast["risk"])
    ).status_code == 404


# --- the database keeps the same rules --------------------------------------------------------


async def insert_execution(engine: AsyncEngine, order_id: int, quantity: str, price: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO executions (order_id, desk_id, quantity, price, venue, executed_at,"
                " external_id, recorded_by)"
                " SELECT id, desk_id, :quantity, :price, 'XNAS', now(), gen_random_uuid(), 0"
                " FROM orders WHERE id = :id"
            ),
            {"id": order_id, "quantity": Decimal(quantity), "price": Decimal(price)},
        )


@pytest.mark.parametrize(
    ("approve", "quantity", "price"),
    [(False, "10", "192.5"), (True, "0.5", "192.5"), (True, "10", "192.56")],
    ids=["not approved", "off the lot size", "through the limit"],
)
async def test_the_database_refuses_a_fill_the_service_would(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    approve: bool,
    quantity: str,
    price: str,
) -> None:
    if approve:
        order_id = await approved_order(client, cast, owner_engine)
    else:
        created = await client.post(
            ORDERS,
            json={
                "client_id": "CUST-1001",
                "symbol": "AAPL",
                "side": "BUY",
                "quantity": 50,
                "price": 192.55,
            },
            headers=cast["trader"],
        )
        order_id = created.json()["id"]
    with pytest.raises(DBAPIError) as refused:
        await insert_execution(owner_engine, order_id, quantity, price)
    assert sqlstate_of(refused.value) == "23514"


async def test_the_database_refuses_an_overfill_and_a_status_that_lies(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    for change in (
        "filled_quantity = 51, avg_fill_price = 1, status = 'PARTIALLY_FILLED'",
        "filled_quantity = 10, avg_fill_price = 1, status = 'FILLED'",
        "filled_quantity = 10, avg_fill_price = NULL, status = 'PARTIALLY_FILLED'",
        "filled_quantity = 50, avg_fill_price = 1, status = 'PARTIALLY_FILLED'",
    ):
        with pytest.raises(DBAPIError) as refused:
            async with owner_engine.begin() as conn:
                await conn.execute(
                    text(f"UPDATE orders SET {change} WHERE id = :id"), {"id": order_id}
                )
        assert sqlstate_of(refused.value) == "23514", change


# --- concurrency ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_concurrent_fills_of_one_position_lose_no_update(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """Twelve orders of the same client and instrument filled at once (buys and sells): the
    position's quantity is the sum of the fills, its version counts them, and the realized
    and unrealized P&L add up to what the trades made."""
    fills = [("BUY", 10 + n, f"{190 + n}.25") for n in range(8)]
    fills += [("SELL", 5 + n, f"{195 + n}.5") for n in range(4)]
    orders = [
        await approved_order(
            client, cast, owner_engine, side=side, quantity=qty, price=None, order_type="MARKET"
        )
        for side, qty, _ in fills
    ]
    responses = await asyncio.gather(
        *(
            record(
                client,
                order_id,
                cast["admin"],
                external_id=f"C-{order_id}",
                quantity=str(qty),
                price=price,
            )
            for order_id, (_, qty, price) in zip(orders, fills, strict=True)
        )
    )
    assert [r.status_code for r in responses] == [201] * len(fills), [r.text for r in responses]
    signed = [(qty if side == "BUY" else -qty, Decimal(price)) for side, qty, price in fills]
    position = await position_of(client, cast)
    assert Decimal(position["quantity"]) == sum(q for q, _ in signed) == 108 - 26
    assert position["version"] == 1 + len(fills)
    cash = -sum(q * p for q, p in signed)
    mark = Decimal(200)
    unrealized = Decimal(position["quantity"]) * mark - Decimal(position["cost_basis"])
    total = Decimal(position["realized_pnl"]) + unrealized
    assert abs(total - (cash + Decimal(position["quantity"]) * mark)) <= Decimal("1e-11")


@pytest.mark.slow
async def test_concurrent_fills_of_one_order_never_overfill_it(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """Seven fills of 10 sent at once against 50: five are recorded, the two that come after
    find the order FILLED, and the history numbers each fill once."""
    order_id = await approved_order(client, cast, owner_engine)
    responses = await asyncio.gather(
        *(
            record(client, order_id, cast["admin"], external_id=f"P-{n}", quantity="10")
            for n in range(7)
        )
    )
    assert sorted(r.status_code for r in responses) == [201] * 5 + [409] * 2
    refused = [r.json() for r in responses if r.status_code == 409]
    assert {(r["type"], r["current_status"]) for r in refused} == {
        (PROBLEMS + "order-not-fillable", "FILLED")
    }
    order = (await client.get(f"{ORDERS}/{order_id}", headers=cast["risk"])).json()
    assert (order["status"], order["filled_quantity"], order["version"]) == ("FILLED", "50", 8)
    events = (await client.get(f"{ORDERS}/{order_id}/events", headers=cast["risk"])).json()["items"]
    assert [e["seq"] for e in events] == list(range(1, 9))
    assert (await position_of(client, cast))["quantity"] == "50"


@pytest.mark.slow
async def test_concurrent_fills_that_together_overfill_leave_the_last_one_out(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    responses = await asyncio.gather(
        *(
            record(client, order_id, cast["admin"], external_id=f"O-{n}", quantity="20")
            for n in range(3)
        )
    )
    assert sorted(r.status_code for r in responses) == [201, 201, 422]
    refused = next(r.json() for r in responses if r.status_code == 422)
    assert (refused["type"], refused["remaining_quantity"]) == (PROBLEMS + "overfill", "10")
    assert (await position_of(client, cast))["quantity"] == "40"


@pytest.mark.slow
async def test_the_same_fill_sent_many_times_at_once_is_recorded_once(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    responses = await asyncio.gather(*(record(client, order_id, cast["admin"]) for _ in range(10)))
    assert sorted(r.status_code for r in responses) == [200] * 9 + [201]
    assert (await position_of(client, cast))["quantity"] == "20"


@pytest.mark.parametrize(
    "changes",
    [
        {"venue": "a\u0000b"},
        {"external_id": "a\u0000b"},
        {"executed_at": "9999-12-31T23:59:59-14:00"},
        {"quantity": "1e400"},
        {"price": "NaN"},
    ],
)
async def test_hostile_fills_are_a_422_never_a_500(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, changes: dict[str, str]
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    response = await record(client, order_id, cast["admin"], **changes)
    assert response.status_code == 422, response.text
    huge = await client.post(
        f"{ORDERS}/9223372036854775808/executions", json=a_fill(), headers=cast["admin"]
    )
    assert huge.status_code == 422
