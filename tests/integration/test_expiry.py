"""Issue 16.4: expiry. DAY orders end with their desk's day, GTD at expire_at, GTC never; the
sweep moves open orders whose time has passed to EXPIRED (once, even with two sweeps at
once), and nothing approves or fills an expired order, in the API or in the database."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from datetime import time as time_of
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import SEED_ORDER, Cast, approved_order, pass_risk_check, submitted_order
from tests.integration.test_job_recovery import wait_for
from tests.integration.test_mcp import mcp_over_http, order_of, problem_of
from tests.live import LiveServer
from tests.pages import sign_in
from tradeops.jobs.app import run_worker
from tradeops.orders import expiry

ORDERS = "/api/v1/orders"
FILL = {
    "quantity": "10",
    "price": "192.5",
    "venue": "XNAS",
    "executed_at": "2026-11-23T14:30:00Z",
    "external_id": "XNAS-E1",
}


async def make_due(engine: AsyncEngine, *order_ids: int) -> None:
    """Their time passed a second ago (as if the clock had moved on)."""
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE orders SET expire_at = now() - interval '1 second' WHERE id = ANY(:ids)"),
            {"ids": list(order_ids)},
        )


async def status_of(client: httpx.AsyncClient, cast: Cast, order_id: int) -> dict[str, Any]:
    response = await client.get(f"{ORDERS}/{order_id}", headers=cast["admin"])
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_day_order_expires_at_its_desks_next_cut_off(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    async with owner_engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE desks SET time_zone = 'America/New_York', day_cutoff = '16:00'"
                " WHERE code = 'EQ-US'"
            )
        )
        expected = await conn.scalar(
            text("SELECT tradeops_day_end('America/New_York', '16:00', now())")
        )
    order = await submitted_order(client, cast)
    assert order["time_in_force"] == "DAY"
    assert datetime.fromisoformat(order["expire_at"]) == expected
    assert (await status_of(client, cast, order["id"]))["expire_at"] == order["expire_at"]


@pytest.mark.parametrize(
    ("zone", "cutoff", "after", "end"),
    [
        # 16:00 in New York is 21:00 UTC in winter, 20:00 in summer; after it, the next day's.
        ("America/New_York", "16:00", "2026-11-27T20:59:59Z", "2026-11-27T21:00:00Z"),
        ("America/New_York", "16:00", "2026-11-27T21:00:00Z", "2026-11-28T21:00:00Z"),
        ("America/New_York", "16:00", "2026-07-01T12:00:00Z", "2026-07-01T20:00:00Z"),
        # Across the spring change (8 March 2026): the local cut-off, not 24 hours later.
        ("America/New_York", "16:00", "2026-03-07T22:00:00Z", "2026-03-08T20:00:00Z"),
        ("Europe/Berlin", "17:30", "2026-11-27T16:00:00Z", "2026-11-27T16:30:00Z"),
        ("UTC", "23:59", "2026-11-27T23:59:30Z", "2026-11-28T23:59:00Z"),
    ],
)
async def test_day_end_is_the_next_local_cut_off(
    owner_engine: AsyncEngine, zone: str, cutoff: str, after: str, end: str
) -> None:
    async with owner_engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT tradeops_day_end(:zone, :cutoff, :after)"),
            {
                "zone": zone,
                "cutoff": time_of.fromisoformat(cutoff),
                "after": datetime.fromisoformat(after),
            },
        )
    assert found == datetime.fromisoformat(end)


async def test_gtd_needs_a_future_expire_at_and_gtc_has_none(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    later = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    gtd = await submitted_order(client, cast, time_in_force="GTD", expire_at=later.isoformat())
    assert datetime.fromisoformat(gtd["expire_at"]) == later
    gtc = await submitted_order(client, cast, time_in_force="gtc")
    assert gtc["expire_at"] is None
    for body, field in [
        ({"time_in_force": "GTD"}, "body"),
        ({"time_in_force": "GTC", "expire_at": later.isoformat()}, "body"),
        ({"time_in_force": "GTD", "expire_at": "2020-01-01T00:00:00Z"}, "body.expire_at"),
    ]:
        response = await client.post(ORDERS, json={**SEED_ORDER, **body}, headers=cast["trader"])
        assert response.status_code == 422, response.text
        assert any(e["field"].startswith(field) for e in response.json()["errors"]), response.text


async def test_desks_take_a_known_time_zone_only(client: httpx.AsyncClient, cast: Cast) -> None:
    desk = {"code": "FX-GLOBAL", "name": "FX", "time_zone": "Asia/Tokyo", "day_cutoff": "15:00"}
    created = await client.post("/api/v1/desks", json=desk, headers=cast["admin"])
    assert created.status_code == 201, created.text
    assert created.json()["time_zone"] == "Asia/Tokyo"
    assert created.json()["day_cutoff"] == "15:00:00"
    bad = {**desk, "code": "FX-2", "time_zone": "Mars/Olympus"}
    refused = await client.post("/api/v1/desks", json=bad, headers=cast["admin"])
    assert refused.status_code == 422, refused.text


async def test_the_sweep_expires_open_orders_whose_time_passed_and_nothing_else(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    pending = (await submitted_order(client, cast))["id"]
    not_due = (await submitted_order(client, cast))["id"]
    gtc = (await submitted_order(client, cast, time_in_force="GTC"))["id"]
    approved = await approved_order(client, cast, owner_engine)
    partly = await approved_order(client, cast, owner_engine)
    filled = await approved_order(client, cast, owner_engine, quantity="10")
    for order_id, external_id in ((partly, "XNAS-P"), (filled, "XNAS-F")):
        fill = await client.post(
            f"{ORDERS}/{order_id}/executions",
            json={**FILL, "external_id": external_id},
            headers=cast["admin"],
        )
        assert fill.status_code == 201, fill.text
    await make_due(owner_engine, pending, approved, partly, filled)

    expired = await expiry.expire_due_orders(app.state.db, 2, request_id="test-sweep")

    # Batches of 2: which due orders (all due at the same instant) go first is not promised.
    assert sorted(expired) == sorted([pending, approved, partly])
    statuses = {i: (await status_of(client, cast, i))["status"] for i in (pending, not_due, gtc)}
    assert statuses == {pending: "EXPIRED", not_due: "PENDING", gtc: "PENDING"}
    partly_now = await status_of(client, cast, partly)
    assert (partly_now["status"], partly_now["filled_quantity"]) == ("EXPIRED", "10")
    assert (await status_of(client, cast, filled))["status"] == "FILLED"
    events = await client.get(f"{ORDERS}/{partly}/events", headers=cast["trader"])
    last = events.json()["items"][-1]
    assert (last["type"], last["actor"]) == ("EXPIRED", "system:expiry")
    assert last["payload"]["status_before"] == "PARTIALLY_FILLED"
    async with owner_engine.connect() as conn:
        audit = (
            await conn.execute(
                text(
                    "SELECT actor, before->>'status', after->>'status', request_id"
                    " FROM audit_events WHERE action = 'order.expired' AND entity_id = :id"
                ),
                {"id": str(partly)},
            )
        ).one()
    assert tuple(audit) == ("system:expiry", "PARTIALLY_FILLED", "EXPIRED", "test-sweep")
    assert await expiry.expire_due_orders(app.state.db, 100) == []  # idempotent


async def test_an_expired_order_is_never_approved_filled_or_cancelled(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """Silence is not consent: the reviewed order nobody approved in time expires."""
    reviewed = (await submitted_order(client, cast))["id"]
    await pass_risk_check(owner_engine, reviewed)
    response = await client.post(f"{ORDERS}/{reviewed}/review", headers=cast["trader2"])
    assert response.status_code == 200, response.text
    approved = await approved_order(client, cast, owner_engine)
    await make_due(owner_engine, reviewed, approved)
    assert await expiry.expire_due_orders(app.state.db, 10) == sorted([reviewed, approved])

    approve = await client.post(f"{ORDERS}/{reviewed}/approve", headers=cast["approver"])
    assert approve.status_code == 409, approve.text
    assert approve.json()["current_status"] == "EXPIRED"
    fill = await client.post(f"{ORDERS}/{approved}/executions", json=FILL, headers=cast["admin"])
    assert fill.status_code == 409, fill.text
    cancel = await client.post(f"{ORDERS}/{approved}/cancel", headers=cast["approver"])
    assert cancel.status_code == 409, cancel.text


async def test_two_sweeps_at_once_expire_each_order_once(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    ids = [(await submitted_order(client, cast))["id"] for _ in range(30)]
    await make_due(owner_engine, *ids)
    first, second = await asyncio.gather(
        expiry.expire_due_orders(app.state.db, 4), expiry.expire_due_orders(app.state.db, 4)
    )
    assert sorted(first + second) == sorted(ids)
    async with owner_engine.connect() as conn:
        events = await conn.scalar(
            text("SELECT count(*) FROM order_events WHERE type = 'EXPIRED' AND order_id = ANY(:i)"),
            {"i": ids},
        )
        audited = await conn.scalar(
            text("SELECT count(*) FROM audit_events WHERE action = 'order.expired'")
        )
    assert events == audited == len(ids)


async def refused(engine: AsyncEngine, statement: str, order_id: int) -> str:
    with pytest.raises(DBAPIError) as raised:
        async with engine.begin() as conn:
            await conn.execute(text(statement), {"id": order_id})
    return str(raised.value)


async def test_the_database_expires_only_open_due_orders_and_keeps_them_expired(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = (await submitted_order(client, cast))["id"]
    early = await refused(
        owner_engine, "UPDATE orders SET status = 'EXPIRED' WHERE id = :id", order_id
    )
    assert "its time has not passed" in early
    await make_due(owner_engine, order_id)
    await expiry.expire_due_orders(app.state.db, 10)
    back = await refused(
        owner_engine,
        "UPDATE orders SET status = 'REVIEWED', reviewed_by = created_by WHERE id = :id",
        order_id,
    )
    assert "an expired order stays expired" in back
    filled = await approved_order(client, cast, owner_engine, quantity="10")
    fill = await client.post(f"{ORDERS}/{filled}/executions", json=FILL, headers=cast["admin"])
    assert fill.status_code == 201, fill.text
    await make_due(owner_engine, filled)
    closed = await refused(
        owner_engine, "UPDATE orders SET status = 'EXPIRED' WHERE id = :id", filled
    )
    assert "only an open order expires" in closed


async def test_mcp_submit_order_takes_time_in_force_and_expire_at(
    live_server: LiveServer, cast: Cast
) -> None:
    later = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    order = {
        **SEED_ORDER,
        "client_order_id": "agent-gtd-1",
        "time_in_force": "GTD",
        "expire_at": later.isoformat(),
    }
    sooner = later - timedelta(days=1)
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        submitted = order_of(await agent.call_tool("submit_order", order))
        read = order_of(await agent.call_tool("get_order", {"order_id": submitted["id"]}))
        amended = order_of(
            await agent.call_tool(
                "replace_order", {"order_id": submitted["id"], "expire_at": sooner.isoformat()}
            )
        )
    assert read["time_in_force"] == "GTD"
    assert datetime.fromisoformat(read["expire_at"]) == later
    assert (amended["replaces"], amended["time_in_force"]) == (submitted["id"], "GTD")
    assert datetime.fromisoformat(amended["expire_at"]) == sooner


async def test_sweep_of_ten_thousand_due_orders_is_measured(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """The sweep's cost: 10,000 due orders (copied from one submitted order), then one sweep."""
    seed = (await submitted_order(client, cast))["id"]
    async with owner_engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO orders (desk_id, client_id, instrument_id, side, order_type,"
                " quantity, price, currency, created_by)"
                " SELECT desk_id, client_id, instrument_id, side, order_type, quantity, price,"
                " currency, created_by FROM orders, generate_series(1, 9999) WHERE id = :id"
            ),
            {"id": seed},
        )
        await conn.execute(text("UPDATE orders SET expire_at = now() - interval '1 second'"))
    started = time.perf_counter()
    expired = await expiry.expire_due_orders(app.state.db, app.state.settings.expiry_batch)
    elapsed = time.perf_counter() - started
    assert len(expired) == 10_000
    print(f"\nexpiry sweep: 10,000 orders in {elapsed:.2f} s ({len(expired) / elapsed:.0f}/s)")


async def test_the_approver_page_shows_an_expired_order_and_refuses_approving_it(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = (await submitted_order(client, cast))["id"]
    await pass_risk_check(owner_engine, order_id)
    reviewed = await client.post(f"{ORDERS}/{order_id}/review", headers=cast["trader2"])
    assert reviewed.status_code == 200, reviewed.text
    await make_due(owner_engine, order_id)
    await expiry.expire_due_orders(app.state.db, 10)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as approver:
        assert (await sign_in(approver, "approver@test.bank")).status_code == 303
        html = (await approver.get(f"/ui/orders/{order_id}")).text
        queue = (await approver.get("/ui/orders?status=EXPIRED")).text
    assert 'data-field="status">EXPIRED<' in html
    assert "nobody may approve or fill it now" in html
    assert "status-expired" in html  # the history's EXPIRED event
    assert "Nothing to decide: the order is EXPIRED." in html
    assert f"/ui/orders/{order_id}" in queue


@pytest.mark.slow
async def test_the_worker_expires_due_orders_on_its_schedule(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, database_url: str
) -> None:
    """What `tradeops worker` runs: the periodic expiry job (every 30 s) finds the due order."""
    order_id = (await submitted_order(client, cast))["id"]
    await make_due(owner_engine, order_id)
    worker = asyncio.create_task(run_worker(database_url, install_signal_handlers=False))
    try:

        async def expired() -> bool:
            return (await status_of(client, cast, order_id))["status"] == "EXPIRED"

        took = await wait_for(expired, 45, "the periodic job expires the due order")
        print(f"\ndue order expired {took:.1f} s after the worker started")
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


async def amend(
    client: httpx.AsyncClient, cast: Cast, order_id: int, **body: Any
) -> httpx.Response:
    return await client.patch(f"{ORDERS}/{order_id}", json=body, headers=cast["trader"])


async def test_an_amended_order_expires_as_the_new_order_it_is(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """DAY: the desk's next cut-off after the amendment; GTD: the same expire_at unless a new
    one is sent; the REPLACED order is closed, so the sweep leaves it be, due or not."""
    day = (await submitted_order(client, cast))["id"]
    await make_due(owner_engine, day)
    replaced_day = await amend(client, cast, day, quantity="50")
    assert replaced_day.status_code == 201, replaced_day.text
    async with owner_engine.connect() as conn:
        cut_off = await conn.scalar(text("SELECT tradeops_day_end('UTC', '23:59', now())"))
    assert datetime.fromisoformat(replaced_day.json()["expire_at"]) == cut_off
    assert await expiry.expire_due_orders(app.state.db, 10) == []
    assert (await status_of(client, cast, day))["status"] == "REPLACED"

    later = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    gtd = (await submitted_order(client, cast, time_in_force="GTD", expire_at=later.isoformat()))[
        "id"
    ]
    same = await amend(client, cast, gtd, quantity="50")
    assert same.status_code == 201, same.text
    assert same.json()["time_in_force"] == "GTD"
    assert datetime.fromisoformat(same.json()["expire_at"]) == later
    stored = await status_of(client, cast, same.json()["id"])
    assert datetime.fromisoformat(stored["expire_at"]) == later
    sooner = later - timedelta(hours=1)
    moved = await amend(client, cast, same.json()["id"], expire_at=sooner.isoformat())
    assert moved.status_code == 201, moved.text
    assert datetime.fromisoformat(moved.json()["expire_at"]) == sooner

    # Only a GTD order takes expire_at, and only in the future.
    for order_id, expire_at in [
        (replaced_day.json()["id"], later.isoformat()),
        (moved.json()["id"], "2020-01-01T00:00:00Z"),
    ]:
        response = await amend(client, cast, order_id, expire_at=expire_at)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "body.expire_at", response.text


async def test_an_expired_order_is_not_amended(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order = (await submitted_order(client, cast))["id"]
    await make_due(owner_engine, order)
    assert await expiry.expire_due_orders(app.state.db, 10) == [order]
    response = await amend(client, cast, order, quantity="50")
    assert response.status_code == 409, response.text
    assert response.json()["current_status"] == "EXPIRED"


async def test_an_amendment_changes_time_in_force_by_the_rules_of_submission(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """Issue 16.1: time_in_force is amendable. GTC and DAY take no expire_at from the caller
    (DAY's is its desk's next cut-off, computed again, never the old order's), GTD needs one
    in the future; the REPLACED order keeps its own terms."""
    async with owner_engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE desks SET time_zone = 'America/New_York', day_cutoff = '16:00'"
                " WHERE code = 'EQ-US'"
            )
        )
    day = await submitted_order(client, cast)
    to_gtc = await amend(client, cast, day["id"], time_in_force="gtc")
    assert to_gtc.status_code == 201, to_gtc.text
    assert (to_gtc.json()["time_in_force"], to_gtc.json()["expire_at"]) == ("GTC", None)
    stored = await status_of(client, cast, to_gtc.json()["id"])
    assert (stored["time_in_force"], stored["expire_at"]) == ("GTC", None)
    old = await status_of(client, cast, day["id"])
    assert (old["status"], old["time_in_force"]) == ("REPLACED", "DAY")
    assert old["expire_at"] == day["expire_at"]

    later = (datetime.now(UTC) + timedelta(hours=30)).replace(microsecond=0)
    gtc = to_gtc.json()["id"]
    for body in [{"time_in_force": "GTD"}, {"time_in_force": "GTD", "quantity": "50"}]:
        response = await amend(client, cast, gtc, **body)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "body.expire_at", response.text
    for body in [
        {"time_in_force": "GTD", "expire_at": "2020-01-01T00:00:00Z"},
        {"time_in_force": "GTC", "expire_at": later.isoformat()},
        {"time_in_force": "DAY", "expire_at": later.isoformat()},
        {"expire_at": later.isoformat()},  # still GTC: only a GTD order takes expire_at
    ]:
        response = await amend(client, cast, gtc, **body)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "body.expire_at", response.text
    assert (await status_of(client, cast, gtc))["status"] == "PENDING"  # refused: unchanged

    to_gtd = await amend(client, cast, gtc, time_in_force="GTD", expire_at=later.isoformat())
    assert to_gtd.status_code == 201, to_gtd.text
    assert to_gtd.json()["time_in_force"] == "GTD"
    assert datetime.fromisoformat(to_gtd.json()["expire_at"]) == later

    to_day = await amend(client, cast, to_gtd.json()["id"], time_in_force="DAY")
    assert to_day.status_code == 201, to_day.text
    async with owner_engine.connect() as conn:
        cut_off = await conn.scalar(
            text("SELECT tradeops_day_end('America/New_York', '16:00', now())")
        )
    assert to_day.json()["time_in_force"] == "DAY"
    assert datetime.fromisoformat(to_day.json()["expire_at"]) == cut_off != later
    stored = await status_of(client, cast, to_day.json()["id"])
    assert datetime.fromisoformat(stored["expire_at"]) == cut_off

    gtd = await submitted_order(client, cast, time_in_force="GTD", expire_at=later.isoformat())
    dropped = await amend(client, cast, gtd["id"], time_in_force="GTC")
    assert dropped.status_code == 201, dropped.text
    assert (dropped.json()["time_in_force"], dropped.json()["expire_at"]) == ("GTC", None)


async def test_mcp_replace_order_changes_time_in_force(live_server: LiveServer, cast: Cast) -> None:
    later = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    order = {**SEED_ORDER, "client_order_id": "agent-day-1"}
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        submitted = order_of(await agent.call_tool("submit_order", order))
        no_expiry = problem_of(
            await agent.call_tool(
                "replace_order", {"order_id": submitted["id"], "time_in_force": "GTD"}
            )
        )
        amended = order_of(
            await agent.call_tool(
                "replace_order",
                {
                    "order_id": submitted["id"],
                    "time_in_force": "GTD",
                    "expire_at": later.isoformat(),
                },
            )
        )
    assert submitted["time_in_force"] == "DAY"
    assert no_expiry["status"] == 422
    assert [e["field"] for e in no_expiry["errors"]] == ["expire_at"], no_expiry
    assert (amended["replaces"], amended["time_in_force"]) == (submitted["id"], "GTD")
    assert datetime.fromisoformat(amended["expire_at"]) == later
