"""Maker-checker: the lifecycle, who may decide, optimistic concurrency and idempotency."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import SEED_ORDER, Cast, make_maker, pass_risk_check
from tradeops.jobs.app import run_worker

ORDERS = "/api/v1/orders"


async def submit(
    client: httpx.AsyncClient, headers: dict[str, str], **changes: Any
) -> dict[str, Any]:
    response = await client.post(ORDERS, json={**SEED_ORDER, **changes}, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def act(
    client: httpx.AsyncClient,
    order_id: int,
    step: str,
    headers: dict[str, str],
    body: dict[str, Any] | None = None,
    **extra_headers: str,
) -> httpx.Response:
    return await client.post(
        f"{ORDERS}/{order_id}/{step}", json=body, headers={**headers, **extra_headers}
    )


async def test_seed_flow_review_then_approve_by_another_user(
    client: httpx.AsyncClient, cast: Cast, database_url: str
) -> None:
    price = {"symbol": "AAPL", "price": "192.40", "as_of": "2026-11-23T14:30:00Z", "source": "t"}
    published = await client.post(
        "/api/v1/market-data/snapshots", json={"snapshots": [price]}, headers=cast["admin"]
    )
    assert published.status_code == 201, published.text
    created = await submit(client, cast["trader"])
    assert created["status"] == "PENDING"
    fetched = (await client.get(f"{ORDERS}/{created['id']}", headers=cast["trader"])).json()
    assert {k: fetched[k] for k in SEED_ORDER} == {
        "client_id": "CUST-1001",
        "symbol": "AAPL",
        "side": "BUY",
        "quantity": "50",
        "price": "192.55",
    }
    await run_worker(database_url, wait=False, install_signal_handlers=False)  # risk check
    reviewed = await act(client, created["id"], "review", cast["trader"], {"note": "client call"})
    assert reviewed.status_code == 200, reviewed.text
    assert (reviewed.json()["status"], reviewed.json()["risk_status"]) == ("REVIEWED", "PASSED")
    assert reviewed.headers["etag"] == '"3"'
    approved = await act(client, created["id"], "approve", cast["approver"], **{"If-Match": '"3"'})
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert (body["status"], body["approved_by"], body["version"]) == (
        "APPROVED",
        "approver@test.bank",
        4,
    )
    # The transition's own statement answers the order: exactly what GET shows after it.
    shown = await client.get(f"{ORDERS}/{created['id']}", headers=cast["approver"])
    assert body == shown.json()
    assert [a["approved_by"] for a in body["approvals"]] == ["approver@test.bank"]

    events = (await client.get(f"{ORDERS}/{created['id']}/events", headers=cast["trader"])).json()[
        "items"
    ]
    assert [e["type"] for e in events] == ["CREATED", "RISK_CHECKED", "REVIEWED", "APPROVED"]
    assert events[1]["payload"] == {"risk_status": "PASSED", "reasons": []}
    assert events[2]["payload"]["note"] == "client call"
    assert events[3]["actor"] == f"user:{cast.ids['approver']}"
    verified = await client.post("/api/v1/audit/verify", headers=cast["risk"])
    assert verified.json()["ok"] is True, verified.json()


async def test_agent_review_is_a_recommendation_and_agents_never_decide(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    order = await submit(client, cast["agent"])
    review = {"recommendation": "APPROVE", "note": "within the client's mandate"}
    assert (await act(client, order["id"], "review", cast["agent"], review)).status_code == 200
    for step, body in (("approve", None), ("reject", {"reason": "agent tries"})):
        refused = await act(client, order["id"], step, cast["agent"], body)
        assert refused.status_code == 403, refused.text
    history = (await client.get(f"{ORDERS}/{order['id']}/events", headers=cast["approver"])).json()[
        "items"
    ]
    assert history[1]["payload"] == review
    assert history[1]["actor"].startswith(f"user:{cast.ids['agent']}/key:")


async def test_maker_cannot_approve_or_reject_own_order(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    # Arrange an order whose maker is the approver (as if submitted through their own key).
    order = await submit(client, cast["trader"])
    await make_maker(owner_engine, order["id"], cast.ids["approver"])
    await pass_risk_check(owner_engine, order["id"])
    await act(client, order["id"], "review", cast["trader"])
    approve = await act(client, order["id"], "approve", cast["approver"])
    assert approve.status_code == 403
    assert approve.json()["type"].endswith("/maker-checker")
    reject = await act(client, order["id"], "reject", cast["approver"], {"reason": "mine"})
    assert reject.status_code == 403


async def test_failed_risk_check_blocks_approval_but_not_rejection(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order = await submit(client, cast["trader"])
    await act(client, order["id"], "review", cast["trader"])
    async with owner_engine.begin() as conn:
        await conn.execute(
            text("UPDATE orders SET risk_status = 'FAILED' WHERE id = :id"), {"id": order["id"]}
        )
    refused = await act(client, order["id"], "approve", cast["approver"])
    assert refused.status_code == 409
    assert refused.json()["type"].endswith("/risk-check-failed")
    rejected = await act(client, order["id"], "reject", cast["approver"], {"reason": "risk"})
    assert rejected.json()["status"] == "REJECTED"


@pytest.mark.parametrize(
    ("path", "step", "body", "current"),
    [
        ([], "approve", None, "PENDING"),
        (["review"], "review", None, "REVIEWED"),
        (["review", "approve"], "reject", {"reason": "late"}, "APPROVED"),
        (["cancel"], "cancel", None, "CANCELLED"),
        (["reject"], "review", None, "REJECTED"),
    ],
)
async def test_illegal_transitions_are_409_naming_the_status(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    path: list[str],
    step: str,
    body: dict[str, Any] | None,
    current: str,
) -> None:
    order = await submit(client, cast["trader"])
    await pass_risk_check(owner_engine, order["id"])
    for done in path:
        who = cast["approver"] if done in ("approve", "reject") else cast["trader"]
        extra = {"reason": "because"} if done == "reject" else None
        assert (await act(client, order["id"], done, who, extra)).status_code == 200
    who = cast["approver"] if step in ("approve", "reject") else cast["trader"]
    response = await act(client, order["id"], step, who, body)
    assert response.status_code == 409
    problem = response.json()
    assert problem["type"].endswith("/illegal-transition")
    assert problem["current_status"] == current


async def test_reject_needs_a_reason(client: httpx.AsyncClient, cast: Cast) -> None:
    order = await submit(client, cast["trader"])
    assert (await act(client, order["id"], "reject", cast["approver"], {})).status_code == 422
    assert (
        await act(client, order["id"], "reject", cast["approver"], {"reason": ""})
    ).status_code == 422


async def test_cancel_by_maker_or_approver_only(client: httpx.AsyncClient, cast: Cast) -> None:
    order = await submit(client, cast["trader"])
    assert (await act(client, order["id"], "cancel", cast["trader2"])).status_code == 403
    assert (await act(client, order["id"], "cancel", cast["trader_fi"])).status_code == 404
    cancelled = await act(client, order["id"], "cancel", cast["trader"], {"reason": "client"})
    assert cancelled.json()["status"] == "CANCELLED"
    other = await submit(client, cast["trader"])
    assert (await act(client, other["id"], "cancel", cast["approver"])).json()[
        "status"
    ] == "CANCELLED"


async def test_stale_version_is_409(client: httpx.AsyncClient, cast: Cast) -> None:
    order = await submit(client, cast["trader"])
    await act(client, order["id"], "review", cast["trader"])
    stale = await act(client, order["id"], "approve", cast["approver"], **{"If-Match": '"1"'})
    assert stale.status_code == 409
    assert stale.json()["type"].endswith("/stale-version")
    assert stale.json()["current_version"] == 2
    by_body = await act(client, order["id"], "approve", cast["approver"], {"expected_version": 1})
    assert by_body.status_code == 409
    bad = await act(client, order["id"], "approve", cast["approver"], **{"If-Match": "xyz"})
    assert bad.status_code == 422


async def test_fifty_concurrent_approvals_exactly_one_wins(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order = await submit(client, cast["trader"])
    await pass_risk_check(owner_engine, order["id"])
    await act(client, order["id"], "review", cast["trader"])
    responses = await asyncio.gather(
        *[
            act(client, order["id"], "approve", cast["approver"], **{"If-Match": '"2"'})
            for _ in range(50)
        ]
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1, statuses
    assert set(statuses) <= {200, 409}
    async with owner_engine.connect() as conn:
        approvals = await conn.scalar(
            text("SELECT count(*) FROM order_events WHERE order_id = :id AND type = 'APPROVED'"),
            {"id": order["id"]},
        )
        audits = await conn.scalar(
            text("SELECT count(*) FROM audit_events WHERE action = 'order.approved'")
        )
    assert approvals == audits == 1


async def test_idempotency_key_replays_the_first_response(
    client: httpx.AsyncClient, cast: Cast, keyed_intake: str
) -> None:
    headers = {**cast["trader"], "Idempotency-Key": "order-42"}
    first = await client.post(ORDERS, json=SEED_ORDER, headers=headers)
    again = await client.post(
        ORDERS, json=dict(reversed(list(SEED_ORDER.items()))), headers=headers
    )
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["location"] == first.headers["location"]
    other_body = await client.post(ORDERS, json={**SEED_ORDER, "quantity": 51}, headers=headers)
    assert other_body.status_code == 422
    assert other_body.json()["type"].endswith("/idempotency-key-reused")
    someone_else = await client.post(
        ORDERS, json=SEED_ORDER, headers={**cast["trader2"], "Idempotency-Key": "order-42"}
    )
    assert someone_else.status_code == 201, "keys are per principal"
    assert someone_else.json()["id"] != first.json()["id"]


async def test_hundred_concurrent_identical_requests_create_one_order(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, keyed_intake: str
) -> None:
    headers = {**cast["agent"], "Idempotency-Key": "burst-1"}
    responses = await asyncio.gather(
        *[client.post(ORDERS, json=SEED_ORDER, headers=headers) for _ in range(100)]
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.text for r in responses}) == 1, "every response identical"
    async with owner_engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM orders")) == 1


async def test_failed_request_leaves_no_key_behind(
    client: httpx.AsyncClient, cast: Cast, keyed_intake: str
) -> None:
    headers = {**cast["trader"], "Idempotency-Key": "retry-me"}
    bad = await client.post(ORDERS, json={**SEED_ORDER, "symbol": "NOPE"}, headers=headers)
    assert bad.status_code == 422
    good = await client.post(ORDERS, json={**SEED_ORDER, "symbol": "NOPE"}, headers=headers)
    assert good.status_code == 422 and "idempotent-replayed" not in good.headers


async def test_transitions_are_idempotent_too(client: httpx.AsyncClient, cast: Cast) -> None:
    order = await submit(client, cast["trader"])
    key = {"Idempotency-Key": "review-1"}
    first = await act(client, order["id"], "review", cast["trader"], **key)
    second = await act(client, order["id"], "review", cast["trader"], **key)
    assert first.status_code == second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    events = (await client.get(f"{ORDERS}/{order['id']}/events", headers=cast["trader"])).json()[
        "items"
    ]
    assert [e["type"] for e in events] == ["CREATED", "REVIEWED"]
