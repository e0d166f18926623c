"""Approval policies per desk: bands by notional say how many distinct people approve an order.

The policy in force at intake is fixed on the order (approvals_required); each approval is a
row of order_approvals; the last one makes the order APPROVED, and the database refuses
APPROVED with fewer (migration 0016).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import (
    SEED_ORDER,
    Cast,
    bearer,
    make_instrument,
    make_user,
    pass_risk_check,
    submitted_order,
)
from tests.integration.test_row_level_security import as_principal, desk_id
from tradeops.auth.principal import Principal, Role

API = "/api/v1"
ORDERS = f"{API}/orders"
POLICY = f"{API}/desks/EQ-US/approval-policy"
# The seed order: 50 x 192.55 = 9,627.50 USD, in the second band; 10 x 192.55 in the first.
TWO_ABOVE_5000 = {
    "currency": "USD",
    "bands": [{"min_notional": "0", "approvals": 1}, {"min_notional": "5000", "approvals": 2}],
}


@pytest.fixture
async def approvers(app: FastAPI, owner_engine: AsyncEngine, cast: Cast) -> Cast:
    """The cast plus approver2 and approver3 on EQ-US."""
    for who in ("approver2", "approver3"):
        user_id = await make_user(owner_engine, f"{who}@test.bank", "approver", ["EQ-US"])
        cast.ids[who] = user_id
        cast.headers[who] = bearer(app.state.tokens.issue(user_id, "approver")[0])
    return cast


async def set_policy(client: httpx.AsyncClient, cast: Cast, policy: dict[str, Any]) -> None:
    response = await client.put(POLICY, json=policy, headers=cast["risk"])
    assert response.status_code == 200, response.text


async def reviewed_order(
    client: httpx.AsyncClient, cast: Cast, engine: AsyncEngine, **changes: Any
) -> dict[str, Any]:
    created = await client.post(ORDERS, json={**SEED_ORDER, **changes}, headers=cast["trader"])
    assert created.status_code == 201, created.text
    order_id = created.json()["id"]
    await pass_risk_check(engine, order_id)
    reviewed = await client.post(f"{ORDERS}/{order_id}/review", headers=cast["trader2"])
    assert reviewed.status_code == 200, reviewed.text
    return dict(reviewed.json())


async def approve(
    client: httpx.AsyncClient, order_id: int, headers: dict[str, str], **body: Any
) -> httpx.Response:
    return await client.post(f"{ORDERS}/{order_id}/approve", json=body or None, headers=headers)


# --- the policy ------------------------------------------------------------------------------


async def test_a_desk_without_a_policy_needs_one_approval(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    response = await client.get(POLICY, headers=cast["risk"])
    assert response.status_code == 200, response.text
    assert response.json() == {
        "desk": "EQ-US",
        "currency": "USD",
        "bands": [{"min_notional": "0", "approvals": 1}],
        "updated_by": None,
        "updated_at": None,
    }


async def test_risk_sets_a_policy_audited_before_and_after(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await set_policy(client, cast, TWO_ABOVE_5000)
    changed = {**TWO_ABOVE_5000, "bands": [{"min_notional": "0", "approvals": 3}]}
    response = await client.put(POLICY, json=changed, headers=cast["admin"])
    assert response.status_code == 200, response.text
    shown = (await client.get(POLICY, headers=cast["admin"])).json()
    assert shown["bands"] == [{"min_notional": "0", "approvals": 3}]
    assert shown["updated_by"] == "admin@test.bank"
    async with owner_engine.connect() as conn:
        events = (
            await conn.execute(
                text(
                    "SELECT before, after FROM audit_events"
                    " WHERE action = 'approval_policy.set' ORDER BY id"
                )
            )
        ).all()
    assert events[0].before is None
    assert events[1].before["bands"] == [
        {"min_notional": "0", "approvals": 1},
        {"min_notional": "5000", "approvals": 2},
    ]
    assert events[1].after["bands"] == [{"min_notional": "0", "approvals": 3}]


@pytest.mark.parametrize(
    "bands",
    [
        [{"min_notional": "100", "approvals": 1}],  # not from 0
        [{"min_notional": "0", "approvals": 1}, {"min_notional": "0", "approvals": 2}],
        [{"min_notional": "0", "approvals": 2}, {"min_notional": "-1", "approvals": 1}],
        [{"min_notional": "0", "approvals": 6}],
        [{"min_notional": "0", "approvals": 0}],
        [],
    ],
)
async def test_bands_start_at_zero_and_rise(
    client: httpx.AsyncClient, cast: Cast, bands: list[dict[str, Any]]
) -> None:
    response = await client.put(POLICY, json={"bands": bands}, headers=cast["risk"])
    assert response.status_code == 422, response.text


async def test_an_unknown_desk_is_404(client: httpx.AsyncClient, cast: Cast) -> None:
    for method in ("GET", "PUT"):
        response = await client.request(
            method, f"{API}/desks/NOPE/approval-policy", json=TWO_ABOVE_5000, headers=cast["risk"]
        )
        assert response.status_code == 404, response.text
        assert response.json()["type"].endswith("/desk-not-found")


@pytest.mark.parametrize("who", ["trader", "trader_fi", "approver", "agent", "nobody"])
async def test_only_risk_and_admin_read_or_set_a_policy(
    client: httpx.AsyncClient, cast: Cast, who: str
) -> None:
    expected = 401 if who == "nobody" else 403
    for path in (POLICY, f"{API}/desks/FI-EU/approval-policy"):
        assert (await client.get(path, headers=cast[who])).status_code == expected
        put = await client.put(path, json=TWO_ABOVE_5000, headers=cast[who])
        assert put.status_code == expected


async def test_the_database_keeps_the_first_band_at_zero(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    with pytest.raises(IntegrityError, match="the first band starts at 0"):
        async with owner_engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO desk_approval_policies (desk_id, currency, updated_by)"
                    " SELECT id, 'USD', :by FROM desks WHERE code = 'EQ-US'"
                ),
                {"by": cast.ids["risk"]},
            )
            await conn.execute(
                text(
                    "INSERT INTO approval_bands (desk_id, min_notional, approvals)"
                    " SELECT id, 10, 2 FROM desks WHERE code = 'EQ-US'"
                )
            )


# --- intake: the band an order falls in is fixed on it ---------------------------------------


async def test_intake_fixes_the_approvals_of_the_orders_band(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    assert (await submitted_order(client, cast))["approvals_required"] == 1  # no policy yet
    await set_policy(client, cast, TWO_ABOVE_5000)
    small = await submitted_order(client, cast, quantity="10")
    large = await submitted_order(client, cast)
    assert (small["approvals_required"], large["approvals_required"]) == (1, 2)
    assert large["approvals"] == []
    # A market order is valued at the latest price; without one, the strictest band applies.
    market = {"order_type": "MARKET", "price": None, "quantity": "10"}
    assert (await submitted_order(client, cast, **market))["approvals_required"] == 2
    price = {"symbol": "AAPL", "price": "100", "as_of": "2026-11-23T10:00:00Z", "source": "t"}
    published = await client.post(
        f"{API}/market-data/snapshots", json={"snapshots": [price]}, headers=cast["admin"]
    )
    assert published.status_code == 201, published.text
    assert (await submitted_order(client, cast, **market))["approvals_required"] == 1
    assert (await submitted_order(client, cast, **{**market, "quantity": "60"}))[
        "approvals_required"
    ] == 2
    # A policy in another currency than the order's: no FX rates, so the strictest band.
    await set_policy(client, cast, {**TWO_ABOVE_5000, "currency": "EUR"})
    assert (await submitted_order(client, cast, quantity="10"))["approvals_required"] == 2
    # The order keeps what it was submitted with.
    read = await client.get(f"{ORDERS}/{small['id']}", headers=cast["trader"])
    assert read.json()["approvals_required"] == 1


async def test_an_amendment_is_banded_again_under_the_policy_in_force(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, approvers: Cast
) -> None:
    """The amended order is a new decision: its approvals come from the band of its new terms,
    under the policy when it is amended, and none of the old order's approvals carry over."""
    await set_policy(client, cast, TWO_ABOVE_5000)
    small = await submitted_order(client, cast, quantity="10")
    grown = await client.patch(
        f"{ORDERS}/{small['id']}", json={"quantity": "50"}, headers=cast["trader"]
    )
    assert grown.status_code == 201, grown.text
    assert (grown.json()["approvals_required"], grown.json()["approvals"]) == (2, [])
    read = await client.get(f"{ORDERS}/{grown.json()['id']}", headers=cast["trader"])
    assert read.json()["approvals_required"] == 2
    large = await reviewed_order(client, cast, owner_engine)
    assert (await approve(client, large["id"], cast["approver"])).status_code == 200
    shrunk = await client.patch(
        f"{ORDERS}/{large['id']}", json={"quantity": "10"}, headers=cast["trader"]
    )
    assert shrunk.status_code == 201, shrunk.text
    assert (shrunk.json()["approvals_required"], shrunk.json()["approvals"]) == (1, [])
    old = (await client.get(f"{ORDERS}/{large['id']}", headers=cast["trader"])).json()
    assert old["status"] == "REPLACED"
    assert [a["approved_by"] for a in old["approvals"]] == ["approver@test.bank"]


# --- approvals from distinct people ----------------------------------------------------------


async def test_two_approvals_from_distinct_people_approve(
    client: httpx.AsyncClient, approvers: Cast, owner_engine: AsyncEngine
) -> None:
    cast = approvers
    await set_policy(client, cast, TWO_ABOVE_5000)
    order = await reviewed_order(client, cast, owner_engine)
    assert order["approvals_required"] == 2
    first = await approve(client, order["id"], cast["approver"], note="looks fine")
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["status"], body["approved_by"]) == ("REVIEWED", None)
    assert body["version"] == order["version"] + 1
    assert first.headers["etag"] == f'"{body["version"]}"'
    assert [(a["approved_by"], a["note"]) for a in body["approvals"]] == [
        ("approver@test.bank", "looks fine")
    ]
    again = await approve(client, order["id"], cast["approver"])
    assert again.status_code == 409
    assert again.json()["type"].endswith("/approval-already-given")
    maker = await approve(client, order["id"], cast["trader"])
    assert maker.status_code == 403
    # If-Match from before the first approval is stale.
    stale = await client.post(
        f"{ORDERS}/{order['id']}/approve",
        headers={**cast["approver2"], "If-Match": f'"{order["version"]}"'},
    )
    assert stale.status_code == 409
    assert stale.json()["type"].endswith("/stale-version")
    last = await approve(client, order["id"], cast["approver2"])
    assert last.status_code == 200, last.text
    done = last.json()
    assert (done["status"], done["approved_by"]) == ("APPROVED", "approver2@test.bank")
    assert [a["approved_by"] for a in done["approvals"]] == [
        "approver@test.bank",
        "approver2@test.bank",
    ]
    events = (await client.get(f"{ORDERS}/{order['id']}/events", headers=cast["trader"])).json()
    steps = [(e["type"], e["payload"]) for e in events["items"]][-2:]
    assert steps == [
        ("APPROVAL_RECORDED", {"note": "looks fine", "approvals": 1, "approvals_required": 2}),
        ("APPROVED", {"approvals": 2, "approvals_required": 2}),
    ]
    async with owner_engine.connect() as conn:
        actions = (
            await conn.scalars(
                text(
                    "SELECT action FROM audit_events WHERE entity = 'order'"
                    " AND entity_id = :id ORDER BY id"
                ),
                {"id": str(order["id"])},
            )
        ).all()
    assert actions[-2:] == ["order.approval_recorded", "order.approved"]


async def test_a_rejection_by_any_approver_ends_it(
    client: httpx.AsyncClient, approvers: Cast, owner_engine: AsyncEngine
) -> None:
    cast = approvers
    await set_policy(client, cast, TWO_ABOVE_5000)
    order = await reviewed_order(client, cast, owner_engine)
    assert (await approve(client, order["id"], cast["approver"])).status_code == 200
    rejected = await client.post(
        f"{ORDERS}/{order['id']}/reject", json={"reason": "no"}, headers=cast["approver2"]
    )
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["status"] == "REJECTED"
    late = await approve(client, order["id"], cast["approver3"])
    assert late.status_code == 409


async def test_racing_for_the_last_approval_exactly_one_approves(
    client: httpx.AsyncClient, approvers: Cast, owner_engine: AsyncEngine
) -> None:
    cast = approvers
    await set_policy(client, cast, TWO_ABOVE_5000)
    order = await reviewed_order(client, cast, owner_engine)
    assert (await approve(client, order["id"], cast["approver"])).status_code == 200
    responses = await asyncio.gather(
        approve(client, order["id"], cast["approver2"]),
        approve(client, order["id"], cast["approver3"]),
    )
    assert sorted(r.status_code for r in responses) == [200, 409], [r.text for r in responses]
    winner = next(r.json() for r in responses if r.status_code == 200)
    assert winner["status"] == "APPROVED"
    assert len(winner["approvals"]) == 2
    assert await counts(owner_engine, order["id"]) == (2, 1)


async def test_racing_for_the_first_and_second_approval_approves_once(
    client: httpx.AsyncClient, approvers: Cast, owner_engine: AsyncEngine
) -> None:
    cast = approvers
    await set_policy(client, cast, TWO_ABOVE_5000)
    order = await reviewed_order(client, cast, owner_engine)
    responses = await asyncio.gather(
        approve(client, order["id"], cast["approver2"]),
        approve(client, order["id"], cast["approver3"]),
    )
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    assert sorted(r.json()["status"] for r in responses) == ["APPROVED", "REVIEWED"]
    assert await counts(owner_engine, order["id"]) == (2, 1)


async def test_one_approver_racing_themselves_approves_once(
    client: httpx.AsyncClient, approvers: Cast, owner_engine: AsyncEngine
) -> None:
    cast = approvers
    await set_policy(client, cast, TWO_ABOVE_5000)
    order = await reviewed_order(client, cast, owner_engine)
    responses = await asyncio.gather(
        *[approve(client, order["id"], cast["approver"]) for _ in range(5)]
    )
    assert sorted(r.status_code for r in responses) == [200, 409, 409, 409, 409]
    assert await counts(owner_engine, order["id"]) == (1, 0)


async def counts(engine: AsyncEngine, order_id: int) -> tuple[int, int]:
    """(approvals recorded, APPROVED events) of an order."""
    async with engine.connect() as conn:
        given = await conn.scalar(
            text("SELECT count(*) FROM order_approvals WHERE order_id = :id"), {"id": order_id}
        )
        approved = await conn.scalar(
            text("SELECT count(*) FROM order_events WHERE order_id = :id AND type = 'APPROVED'"),
            {"id": order_id},
        )
    return int(given or 0), int(approved or 0)


# --- the database backs it -------------------------------------------------------------------


async def test_the_database_refuses_approved_with_fewer_approvals(
    client: httpx.AsyncClient, approvers: Cast, owner_engine: AsyncEngine
) -> None:
    cast = approvers
    await set_policy(client, cast, TWO_ABOVE_5000)
    order = await reviewed_order(client, cast, owner_engine)
    assert (await approve(client, order["id"], cast["approver"])).status_code == 200
    params = {"id": order["id"], "by": cast.ids["approver"]}
    with pytest.raises(DBAPIError, match="1 of the 2 approvals"):
        async with owner_engine.begin() as conn:
            await conn.execute(
                text("UPDATE orders SET status = 'APPROVED', approved_by = :by WHERE id = :id"),
                params,
            )
    with pytest.raises(IntegrityError, match="pk_order_approvals"):
        async with owner_engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO order_approvals (order_id, desk_id, approved_by)"
                    " SELECT id, desk_id, :by FROM orders WHERE id = :id"
                ),
                params,
            )
    with pytest.raises(DBAPIError, match="maker"):
        async with owner_engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO order_approvals (order_id, desk_id, approved_by)"
                    " SELECT id, desk_id, created_by FROM orders WHERE id = :id"
                ),
                params,
            )
    with pytest.raises(DBAPIError, match="fixed when it is submitted"):
        async with owner_engine.begin() as conn:
            await conn.execute(
                text("UPDATE orders SET approvals_required = 1 WHERE id = :id"), params
            )


async def test_an_approval_before_the_last_is_no_webhook_event(owner_engine: AsyncEngine) -> None:
    """Webhooks (migration 0012) map event types: APPROVAL_RECORDED is none of theirs, so
    `order.approved` is sent once, with the last approval."""
    async with owner_engine.connect() as conn:
        kinds = (
            await conn.execute(
                text(
                    "SELECT webhook_event_type('APPROVAL_RECORDED', '{}', 'REVIEWED', 'PASSED'),"
                    " webhook_event_type('APPROVED', '{}', 'APPROVED', 'PASSED')"
                )
            )
        ).one()
    assert tuple(kinds) == (None, "order.approved")


# --- row-level security by desk --------------------------------------------------------------


async def test_approvals_and_policies_are_seen_by_desk(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    for desk in ("EQ-US", "FI-EU"):
        put = await client.put(
            f"{API}/desks/{desk}/approval-policy", json=TWO_ABOVE_5000, headers=cast["risk"]
        )
        assert put.status_code == 200, put.text
    eq = await reviewed_order(client, cast, owner_engine, quantity="10")
    assert (await approve(client, eq["id"], cast["approver"])).status_code == 200
    fi = await client.post(
        ORDERS,
        json={**SEED_ORDER, "client_id": "CUST-2001", "quantity": "10"},
        headers=cast["trader_fi"],
    )
    fi_id = fi.json()["id"]
    await pass_risk_check(owner_engine, fi_id)
    assert (await client.post(f"{ORDERS}/{fi_id}/review", headers=cast["trader_fi"])).is_success
    assert (await approve(client, fi_id, cast["approver_fi"])).status_code == 200
    eq_us = await desk_id(owner_engine, "EQ-US")
    trader = Principal(cast.ids["trader"], "trader@test.bank", Role.TRADER, frozenset({eq_us}))
    async with owner_engine.connect() as conn, conn.begin():
        await as_principal(conn, trader)
        seen = (await conn.scalars(text("SELECT order_id FROM order_approvals"))).all()
        assert seen == [eq["id"]]
        desks = set((await conn.scalars(text("SELECT desk_id FROM approval_bands"))).all())
        assert desks == {eq_us}
        policies = (await conn.scalars(text("SELECT desk_id FROM desk_approval_policies"))).all()
        assert policies == [eq_us]
    with pytest.raises(DBAPIError, match="row-level security"):
        async with owner_engine.connect() as conn, conn.begin():
            await as_principal(conn, trader)
            await conn.execute(text("DELETE FROM approval_bands WHERE desk_id = :d"), {"d": eq_us})
            await conn.execute(
                text(
                    "INSERT INTO approval_bands (desk_id, min_notional, approvals)"
                    " VALUES (:d, 0, 1)"
                ),
                {"d": eq_us},
            )


# --- the rule itself, in the database ----------------------------------------------------------

APPROVALS_REQUIRED = text(
    "SELECT tradeops_approvals_required((SELECT id FROM desks WHERE code = :desk),"
    " (SELECT id FROM instruments WHERE symbol = :symbol),"
    " CAST(:quantity AS numeric), CAST(:price AS numeric))"
)
A_PRICE = text(
    "INSERT INTO market_snapshots (instrument_id, price, as_of, source)"
    " SELECT id, CAST(:price AS numeric), now() - make_interval(mins => :minutes_ago), 'test'"
    " FROM instruments WHERE symbol = :symbol"
)
THREE_BANDS = {
    "currency": "USD",
    "bands": [
        {"min_notional": "0", "approvals": 1},
        {"min_notional": "5000", "approvals": 2},
        {"min_notional": "20000", "approvals": 3},
    ],
}


async def test_the_database_works_out_an_orders_approvals_in_every_case(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """tradeops_approvals_required, the trigger's rule for every writer (migrations 0016,
    0018, 0024, 0034), by each of its branches."""
    await make_instrument(owner_engine, "SAP", currency="EUR")
    await make_instrument(owner_engine, "UNPRICED")
    await set_policy(client, cast, THREE_BANDS)
    async with owner_engine.begin() as conn:
        # AAPL's latest price is 100; an older one (900) must not count.
        for price, minutes_ago in (("900", 5), ("100", 1)):
            await conn.execute(
                A_PRICE, {"price": price, "minutes_ago": minutes_ago, "symbol": "AAPL"}
            )
        await conn.execute(A_PRICE, {"price": "100", "minutes_ago": 1, "symbol": "SAP"})

    async def required(desk: str, symbol: str, quantity: str, price: str | None) -> int | None:
        async with owner_engine.connect() as conn:
            values = {"desk": desk, "symbol": symbol, "quantity": quantity, "price": price}
            return await conn.scalar(APPROVALS_REQUIRED, values)

    # A limit order, by its own price: each band from its lower bound on.
    assert await required("EQ-US", "AAPL", "49", "100") == 1
    assert await required("EQ-US", "AAPL", "50", "100") == 2
    assert await required("EQ-US", "AAPL", "200", "100") == 3
    # A market order, by the instrument's latest price (100, not the older 900).
    assert await required("EQ-US", "AAPL", "60", None) == 2
    # No price to value it: the desk's most demanding band.
    assert await required("EQ-US", "UNPRICED", "1", None) == 3
    # Not in the policy's currency: the most demanding band, whatever the notional.
    assert await required("EQ-US", "SAP", "1", "100") == 3
    assert await required("EQ-US", "SAP", "1", None) == 3
    # A desk with no policy and no bands: one approval.
    assert await required("FI-EU", "AAPL", "1000", "100") == 1
    # An instrument that does not exist: no answer (the trigger makes it 1).
    assert await required("EQ-US", "NOPE", "1", "100") is None
