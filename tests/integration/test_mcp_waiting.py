"""Agents wait for a decision: wait_for_order_update, and every tool's MCP annotations.

The tool returns as soon as the order's version passes the one the agent saw, woken by the
same commit-time notifications as the event stream (orders/stream.py), or with the order
unchanged at its timeout; no database connection is held while it waits.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
import pytest
from mcp import Client
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import SEED_ORDER, Cast
from tests.integration.test_mcp import ORDER, mcp_over_http, order_of, problem_of, stdio_server
from tests.live import LiveServer

pytestmark = pytest.mark.slow

# (readOnlyHint, destructiveHint, idempotentHint) of every tool, as an agent's client reads
# them: reads are read-only; a cancelled order stays cancelled (destructive); a repeated
# submit (same client_order_id), review or cancel changes nothing more (idempotent: the
# repeat is answered with the order, or refused as illegal-transition).
ANNOTATIONS = {
    "list_clients": (True, False, True),
    "list_instruments": (True, False, True),
    "get_portfolio": (True, False, True),
    "get_market_data": (True, False, True),
    "get_order": (True, False, True),
    "list_orders": (True, False, True),
    "wait_for_order_update": (True, False, True),
    "submit_order": (False, False, True),
    "review_order": (False, False, True),
    "cancel_order": (False, True, True),
    "replace_order": (False, True, True),
    "cancel_orders": (False, True, True),
    "bust_execution": (False, True, True),
}


async def test_every_tool_is_annotated(live_server: LiveServer, cast: Cast) -> None:
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        tools = (await agent.list_tools()).tools
    assert {tool.name for tool in tools} == set(ANNOTATIONS)
    for tool in tools:
        hints = tool.annotations
        assert hints is not None, tool.name
        got = (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint)
        assert got == ANNOTATIONS[tool.name], tool.name
        assert hints.open_world_hint is False and hints.title == tool.title


async def _wait(agent: Client, order_id: int, after: int, timeout: float) -> dict[str, Any]:
    arguments = {"order_id": order_id, "after_version": after, "timeout_seconds": timeout}
    return order_of(await agent.call_tool("wait_for_order_update", arguments))


async def test_an_agent_waits_for_the_decision(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """Submit, review, then wait: the wait returns when a person approves, not before."""
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        order = order_of(await agent.call_tool("submit_order", ORDER))
        reviewed = order_of(
            await agent.call_tool(
                "review_order",
                {"order_id": order["id"], "recommendation": "APPROVE", "note": "Fits limits."},
            )
        )
        async with owner_engine.begin() as conn:  # as the risk job would
            await conn.execute(text("UPDATE orders SET risk_status = 'PASSED'"))
        version = reviewed["version"]  # the owner's update above moves no version
        waiting = asyncio.create_task(_wait(agent, order["id"], version, 30))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        approved = await client.post(
            f"/api/v1/orders/{order['id']}/approve",
            headers={**cast["approver"], "If-Match": f'"{version}"'},
        )
        assert approved.status_code == 200, approved.text
        decided = await asyncio.wait_for(waiting, 5)
    assert decided["status"] == "APPROVED" and decided["version"] == version + 1
    assert decided["approved_by"] == "approver@test.bank"


async def test_the_wait_ends_at_its_timeout_with_the_order_unchanged(
    live_server: LiveServer, cast: Cast
) -> None:
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        order = order_of(await agent.call_tool("submit_order", ORDER))
        started = time.monotonic()
        same = await _wait(agent, order["id"], order["version"], 1.0)
        waited = time.monotonic() - started
        at_once = await _wait(agent, order["id"], 0, 30)  # already past version 0
    assert same == order and 1.0 <= waited < 3.0
    assert at_once == order


async def test_waiting_is_refused_where_reading_is(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast
) -> None:
    created = await client.post(
        "/api/v1/orders", json={**SEED_ORDER, "client_id": "CUST-2001"}, headers=cast["trader_fi"]
    )
    other_desk = created.json()["id"]
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        started = time.monotonic()
        hidden = problem_of(
            await agent.call_tool(
                "wait_for_order_update",
                {"order_id": other_desk, "after_version": 1, "timeout_seconds": 30},
            )
        )
        too_long = problem_of(
            await agent.call_tool(
                "wait_for_order_update",
                {"order_id": other_desk, "after_version": 1, "timeout_seconds": 61},
            )
        )
    assert hidden["status"] == 404 and time.monotonic() - started < 5  # at once, not at 30 s
    assert too_long["status"] == 422


async def test_time_from_commit_to_the_wait_returning(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast
) -> None:
    """p50 over 20 orders, from the review's answer (the commit is before it) to the
    agent's wait returning."""
    delays: list[float] = []
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        for i in range(20):
            order = order_of(
                await agent.call_tool("submit_order", {**ORDER, "client_order_id": f"w-{i}"})
            )
            waiting = asyncio.create_task(_wait(agent, order["id"], order["version"], 30))
            await asyncio.sleep(0.2)
            reviewed = await client.post(
                f"/api/v1/orders/{order['id']}/review", headers=cast["trader"]
            )
            assert reviewed.status_code == 200
            answered = time.perf_counter()
            changed = await asyncio.wait_for(waiting, 10)
            delays.append(time.perf_counter() - answered)
            assert changed["status"] == "REVIEWED"
    p50 = statistics.median(delays)
    print(f"\ncommit → wait_for_order_update returns, p50 over 20: {p50 * 1000:.1f} ms")
    assert p50 < 0.5


async def test_an_agent_waits_over_stdio(
    client: httpx.AsyncClient, cast: Cast, database_url: str
) -> None:
    """`tradeops mcp` is a process of its own: it listens for itself, on first need."""
    key = cast["agent"]["Authorization"].removeprefix("Bearer ")
    async with Client(stdio_server(database_url, key)) as agent:
        order = order_of(await agent.call_tool("submit_order", ORDER))
        waiting = asyncio.create_task(_wait(agent, order["id"], order["version"], 30))
        await asyncio.sleep(1.0)
        assert not waiting.done()
        reviewed = await client.post(f"/api/v1/orders/{order['id']}/review", headers=cast["trader"])
        assert reviewed.status_code == 200
        changed = await asyncio.wait_for(waiting, 5)
    assert changed["status"] == "REVIEWED"
