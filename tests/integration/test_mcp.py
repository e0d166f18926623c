"""Agents over MCP: the SDK's own client, over HTTP against a running server, and over stdio.

The tools call the same services as the HTTP API, so these tests compare what each answers:
the same orders, the same refusals, the same problem detail text.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import (
    SEED_ORDER,
    Cast,
    approved_order,
    bearer,
    database_refusing_cancel,
    make_api_key,
)
from tests.live import LiveServer

pytestmark = pytest.mark.slow

API = "/api/v1"
ORDER = {**SEED_ORDER, "quantity": "50", "price": "192.55", "client_order_id": "agent-0001"}
TOOLS = {
    "list_clients",
    "list_instruments",
    "get_market_data",
    "get_portfolio",
    "submit_order",
    "get_order",
    "list_orders",
    "review_order",
    "cancel_order",
    "replace_order",
    "cancel_orders",
    "bust_execution",
    "wait_for_order_update",
}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}


@asynccontextmanager
async def mcp_over_http(
    live_server: LiveServer, headers: dict[str, str], mode: str = "auto"
) -> AsyncIterator[Client]:
    """The SDK's client. "auto" speaks the newest protocol (2026-07-28, one POST a request);
    "legacy" the initialize handshake of the 2025 revisions that desktop clients still use."""
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        transport = streamable_http_client(f"{live_server.url}/mcp", http_client=http)
        async with Client(transport, mode=mode) as client:
            yield client


def problem_of(result: CallToolResult) -> dict[str, Any]:
    """A failed call's problem document, from its text (what a language model reads)."""
    assert result.is_error, result
    document: dict[str, Any] = json.loads(result.content[0].text)  # type: ignore[union-attr]
    assert document == result.structured_content
    return document


def order_of(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    assert json.loads(result.content[0].text) == result.structured_content  # type: ignore[union-attr]
    return result.structured_content


async def agent_key_id(engine: AsyncEngine, cast: Cast) -> int:
    async with engine.connect() as conn:
        key_id = await conn.scalar(
            text("SELECT id FROM api_keys WHERE owner_user_id = :id"), {"id": cast.ids["agent"]}
        )
    return int(key_id)


async def tool_audit_events(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT action, actor, api_key_id, request_id, entity, entity_id, after"
                " FROM audit_events WHERE action LIKE 'mcp.tool.%' ORDER BY id"
            )
        )
        return list(result)


# --- the workflow ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_agent_submits_reads_and_reviews_an_order(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast, mode: str
) -> None:
    async with mcp_over_http(live_server, cast["agent"], mode) as agent:
        assert (agent.protocol_version >= "2026") == (mode == "auto")
        submitted = order_of(await agent.call_tool("submit_order", ORDER))
        assert submitted["status"] == "PENDING"
        assert submitted["quantity"] == "50" and submitted["price"] == "192.55"
        assert submitted["client_order_id"] == "agent-0001"

        read = order_of(await agent.call_tool("get_order", {"order_id": submitted["id"]}))
        assert read["id"] == submitted["id"] and read["status"] == "PENDING"

        reviewed = order_of(
            await agent.call_tool(
                "review_order",
                {
                    "order_id": submitted["id"],
                    "recommendation": "APPROVE",
                    "note": "Within the client's mandate; price near the last trade.",
                    "expected_version": read["version"],
                },
            )
        )
        listed = order_of(await agent.call_tool("list_orders", {"status": "REVIEWED"}))
        # risk_status filters as on GET /orders; PENDING first: a check only moves it on
        # (found once, or twice when it passes between the two lists).
        by_risk = [
            order_of(await agent.call_tool("list_orders", {"risk_status": risk}))
            for risk in ("PENDING", "PASSED", "FAILED")
        ]
    assert reviewed["status"] == "REVIEWED"
    assert {o["id"] for page in by_risk[:2] for o in page["items"]} == {submitted["id"]}
    assert by_risk[2]["items"] == []
    assert reviewed["reviewed_by"] == "agent@test.bank" and reviewed["approved_by"] is None
    assert [o["id"] for o in listed["items"]] == [submitted["id"]]

    # The same order, as the HTTP API shows it to a person, with the agent's review note.
    over_http = await client.get(f"{API}/orders/{submitted['id']}", headers=cast["approver"])
    assert over_http.json() == reviewed
    events = await client.get(f"{API}/orders/{submitted['id']}/events", headers=cast["approver"])
    review = events.json()["items"][-1]
    assert review["type"] == "REVIEWED"
    assert review["payload"]["recommendation"] == "APPROVE"
    assert review["payload"]["note"] == "Within the client's mandate; price near the last trade."


async def test_reference_data_and_prices_read_through_tools(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast
) -> None:
    price = {"symbol": "AAPL", "price": "192.55", "as_of": "2026-11-23T10:00:00Z", "source": "t"}
    published = await client.post(
        f"{API}/market-data/snapshots", json={"snapshots": [price]}, headers=cast["admin"]
    )
    assert published.status_code == 201, published.text
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        clients = order_of(await agent.call_tool("list_clients", {}))
        instruments = order_of(await agent.call_tool("list_instruments", {"active": True}))
        latest = order_of(await agent.call_tool("get_market_data", {"symbol": "aapl"}))
        unpriced = problem_of(await agent.call_tool("get_market_data", {"symbol": "MSFT"}))
    # Only the clients of the agent's desk (EQ-US), never FI-EU's CUST-2001.
    assert [c["client_id"] for c in clients["items"]] == ["CUST-1001", "CUST-1002"]
    assert {i["symbol"]: i["lot_size"] for i in instruments["items"]} == {"AAPL": "1", "MSFT": "1"}
    assert latest["price"] == "192.55" and latest["symbol"] == "AAPL"
    http_unpriced = await client.get(f"{API}/market-data/MSFT", headers=cast["agent"])
    assert unpriced["status"] == 404 and unpriced["detail"] == http_unpriced.json()["detail"]


async def test_portfolio_through_the_tool_is_the_http_portfolio(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    price = {"symbol": "AAPL", "price": "200.00", "as_of": "2026-11-23T10:00:00Z", "source": "t"}
    published = await client.post(
        f"{API}/market-data/snapshots", json={"snapshots": [price]}, headers=cast["admin"]
    )
    assert published.status_code == 201, published.text
    order_id = await approved_order(client, cast, owner_engine)
    fill = {
        "quantity": "50",
        "price": "192.55",
        "venue": "XNAS",
        "executed_at": "2026-11-23T10:01:00Z",
        "external_id": "XNAS-MCP-1",
    }
    executions = f"{API}/orders/{order_id}/executions"
    filled = await client.post(executions, json=fill, headers=cast["admin"])
    assert filled.status_code == 201, filled.text
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        portfolio = order_of(await agent.call_tool("get_portfolio", {"client_id": "CUST-1001"}))
        other_desk = problem_of(await agent.call_tool("get_portfolio", {"client_id": "CUST-2001"}))
    [position] = portfolio["positions"]
    assert (position["symbol"], position["quantity"], position["unrealized_pnl"]) == (
        "AAPL",
        "50",
        "372.5",  # (200 - 192.55) x 50
    )
    over_http = await client.get(f"{API}/clients/CUST-1001/portfolio", headers=cast["agent"])
    assert over_http.status_code == 200, over_http.text
    # The same document; timestamps are the same instants, written with or without micros.
    documents = [portfolio, over_http.json()]
    for document in documents:
        document.pop("as_of")
        for each in document["positions"]:
            each["price_as_of"] = datetime.fromisoformat(each["price_as_of"])
    assert documents[0] == documents[1]
    assert other_desk["status"] == 404


async def test_tools_are_described_with_their_schemas(live_server: LiveServer, cast: Cast) -> None:
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        tools = {tool.name: tool for tool in (await agent.list_tools()).tools}
    assert set(tools) == TOOLS
    submit = tools["submit_order"]
    assert "client_order_id" in submit.input_schema["required"]
    assert "human approver" in (submit.description or "")
    assert "decimal strings" in (submit.description or "")
    assert submit.annotations is not None and submit.annotations.read_only_hint is False
    review = tools["review_order"].input_schema
    assert set(review["required"]) == {"order_id", "recommendation", "note"}
    assert tools["get_order"].output_schema is not None
    assert tools["get_order"].output_schema["properties"]["quantity"]["type"] == "string"


# --- idempotent submission ----------------------------------------------------------------


async def test_retried_submit_returns_the_order_already_recorded(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        first = order_of(await agent.call_tool("submit_order", ORDER))
        # The same order in other spellings (a number, lower case) is the same order.
        retry = {**ORDER, "quantity": 50, "side": "buy", "price": "192.550"}
        again = order_of(await agent.call_tool("submit_order", retry))
        changed = problem_of(await agent.call_tool("submit_order", {**ORDER, "quantity": "60"}))
    assert again == first
    async with owner_engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM orders")) == 1
    over_http = await client.post(
        f"{API}/orders", json={**ORDER, "quantity": "60"}, headers=cast["agent"]
    )
    assert over_http.status_code == 409
    # The same rule over HTTP: the same order again is the order recorded, 200.
    retried_over_http = await client.post(f"{API}/orders", json=retry, headers=cast["agent"])
    assert retried_over_http.status_code == 200 and retried_over_http.json() == first
    assert changed["status"] == 409 and changed["type"].endswith("/duplicate-client-order-id")
    assert changed["detail"] == over_http.json()["detail"]
    assert changed["existing_order_id"] == first["id"]


# --- what an agent cannot do ---------------------------------------------------------------


async def test_no_tool_approves_or_rejects_an_order(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast
) -> None:
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        names = {tool.name for tool in (await agent.list_tools()).tools}
        order = order_of(await agent.call_tool("submit_order", ORDER))
        reviewed = order_of(
            await agent.call_tool(
                "review_order",
                {"order_id": order["id"], "recommendation": "APPROVE", "note": "Looks right."},
            )
        )
        attempts = [
            await agent.call_tool(name, {"order_id": order["id"], "reason": "x"})
            for name in ("approve_order", "reject_order", "approve")
        ]
        # A review that smuggles a decision is still only a review (unknown fields refused).
        smuggled = await agent.call_tool(
            "review_order",
            {
                "order_id": order["id"],
                "recommendation": "APPROVE",
                "note": "n",
                "status": "APPROVED",
            },
        )
    assert not any("approve" in name or "reject" in name for name in names)
    for attempt in attempts:
        problem = problem_of(attempt)
        assert problem["status"] == 404 and problem["type"].endswith("/unknown-tool")
        assert "a human approver decides" in problem["detail"]
    assert problem_of(smuggled)["status"] == 422
    assert reviewed["status"] == "REVIEWED"
    now = (await client.get(f"{API}/orders/{order['id']}", headers=cast["approver"])).json()
    assert now["status"] == "REVIEWED" and now["approved_by"] is None


async def test_orders_and_clients_of_another_desk_are_unknown(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast
) -> None:
    fi_order = await client.post(
        f"{API}/orders", json={**SEED_ORDER, "client_id": "CUST-2001"}, headers=cast["trader_fi"]
    )
    fi_id = fi_order.json()["id"]
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        read = problem_of(await agent.call_tool("get_order", {"order_id": fi_id}))
        review = problem_of(
            await agent.call_tool(
                "review_order", {"order_id": fi_id, "recommendation": "REJECT", "note": "n"}
            )
        )
        cancel = problem_of(await agent.call_tool("cancel_order", {"order_id": fi_id}))
        submit = problem_of(
            await agent.call_tool("submit_order", {**ORDER, "client_id": "CUST-2001"})
        )
        listed = order_of(await agent.call_tool("list_orders", {}))
    http_read = (await client.get(f"{API}/orders/{fi_id}", headers=cast["agent"])).json()
    assert read["status"] == review["status"] == cancel["status"] == 404
    assert read["detail"] == review["detail"] == cancel["detail"] == http_read["detail"]
    assert submit["status"] == 422 and submit["detail"] == "Unknown client CUST-2001."
    assert listed["items"] == []
    untouched = (await client.get(f"{API}/orders/{fi_id}", headers=cast["trader_fi"])).json()
    assert untouched["status"] == "PENDING"


async def test_an_agent_cannot_cancel_a_traders_order(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast
) -> None:
    created = await client.post(f"{API}/orders", json=SEED_ORDER, headers=cast["trader"])
    order_id = created.json()["id"]
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        refused = problem_of(await agent.call_tool("cancel_order", {"order_id": order_id}))
    over_http = await client.post(f"{API}/orders/{order_id}/cancel", headers=cast["agent"])
    assert refused["status"] == over_http.status_code == 403
    assert refused["detail"] == over_http.json()["detail"]


async def test_agent_amends_finds_by_client_order_id_and_cancels_its_own_orders(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast
) -> None:
    """Issue 16 over MCP: replace_order, get_order by client_order_id, cancel_orders (the
    key owner's own orders only: a trader's order on the same desk is never in the results)."""
    traders = await client.post(f"{API}/orders", json=SEED_ORDER, headers=cast["trader"])
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        old = order_of(await agent.call_tool("submit_order", ORDER))
        new = order_of(
            await agent.call_tool(
                "replace_order",
                {
                    "order_id": old["id"],
                    "quantity": "70",
                    "client_order_id": "agent-0001-a",
                    "expected_version": old["version"],
                },
            )
        )
        found = order_of(await agent.call_tool("get_order", {"client_order_id": "agent-0001-a"}))
        replaced = order_of(await agent.call_tool("get_order", {"order_id": old["id"]}))
        both = problem_of(
            await agent.call_tool("get_order", {"order_id": 1, "client_order_id": "x"})
        )
        not_mine = problem_of(
            await agent.call_tool(
                "replace_order", {"order_id": traders.json()["id"], "quantity": "10"}
            )
        )
        swept = order_of(await agent.call_tool("cancel_orders", {"symbol": "AAPL"}))
    assert (new["status"], new["replaces"], new["quantity"]) == ("PENDING", old["id"], "70")
    assert found == new
    assert (replaced["status"], replaced["replaced_by"]) == ("REPLACED", new["id"])
    assert both["status"] == 422
    assert not_mine["status"] == 403
    assert swept["results"] == [
        {"id": new["id"], "status": 200, "order": swept["results"][0]["order"], "problem": None}
    ]
    assert swept["results"][0]["order"]["status"] == "CANCELLED"
    still = await client.get(f"{API}/orders/{traders.json()['id']}", headers=cast["trader"])
    assert still.json()["status"] == "PENDING"


async def test_agent_cancel_orders_answers_a_cancel_the_database_refuses_as_that_orders_409(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """As over HTTP (test_order_lifecycle): an order whose cancel the database refuses is that
    order's 409 with the problem the single cancel answers; the agent's other one is cancelled."""
    made = [await client.post(f"{API}/orders", json=SEED_ORDER, headers=cast["agent"])]
    made.append(await client.post(f"{API}/orders", json=SEED_ORDER, headers=cast["agent"]))
    kept, held = (response.json()["id"] for response in made)
    refusal = "PERFORM orders_maker_checker_refuse(NEW.id, 'held by compliance')"
    async with (
        database_refusing_cancel(owner_engine, {held: refusal}),
        mcp_over_http(live_server, cast["agent"]) as agent,
    ):
        swept = order_of(await agent.call_tool("cancel_orders", {"symbol": "AAPL"}))
    results = {r["id"]: r for r in swept["results"]}
    assert (results[kept]["status"], results[kept]["order"]["status"]) == (200, "CANCELLED")
    refused = results[held]
    assert (refused["status"], refused["order"]) == (409, None)
    assert refused["problem"]["type"].endswith("/maker-checker-refused")
    assert refused["problem"]["instance"] == "/mcp/tools/cancel_orders"
    assert "compliance" not in str(refused["problem"])
    still = await client.get(f"{API}/orders/{held}", headers=cast["agent"])
    assert still.json()["status"] == "PENDING"


# --- authentication and scopes ----------------------------------------------------------------


async def test_mcp_without_a_valid_agent_key_is_refused_before_mcp(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    revoked_id, revoked = await make_api_key(owner_engine, "agent@test.bank", ["orders:read"])
    revoking = await client.delete(f"{API}/api-keys/{revoked_id}", headers=cast["admin"])
    assert revoking.status_code == 200
    expired_id, expired = await make_api_key(owner_engine, "agent@test.bank", ["orders:read"])
    async with owner_engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = :id"),
            {"id": expired_id},
        )
    refused = {
        "no key": {},
        "revoked key": bearer(revoked),
        "expired key": bearer(expired),
        "made-up key": bearer("tro_abcdefghijkl_not-a-real-secret"),
        "a person's token": cast["trader"],
    }
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        for why, headers in refused.items():
            response = await http.post(
                "/mcp",
                json=INITIALIZE,
                headers={**headers, "Accept": "application/json, text/event-stream"},
            )
            assert response.status_code == 401, why
            assert response.headers["content-type"] == "application/problem+json", why
            assert response.headers["www-authenticate"].startswith("Bearer"), why
            assert response.json()["status"] == 401, why
        accepted = await http.post(
            "/mcp",
            json=INITIALIZE,
            headers={**cast["agent"], "Accept": "application/json, text/event-stream"},
        )
        metrics = (await http.get("/metrics")).text
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["result"]["serverInfo"]["name"] == "tradeops"
    assert 'route="/mcp",status="401"' in metrics and 'route="/mcp",status="200"' in metrics
    # The SDK's client, refused, fails to connect.
    with pytest.raises(Exception):  # noqa: B017 - the transport's error type is the SDK's to choose
        async with mcp_over_http(live_server, bearer(revoked)) as agent:
            await agent.list_tools()


async def test_a_key_without_the_scope_gets_the_problem_naming_it(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    _, key = await make_api_key(owner_engine, "agent@test.bank", ["orders:read"])
    async with mcp_over_http(live_server, bearer(key)) as agent:
        instruments = order_of(await agent.call_tool("list_instruments", {}))
        submit = problem_of(await agent.call_tool("submit_order", ORDER))
        clients = problem_of(await agent.call_tool("list_clients", {}))
    over_http = await client.post(f"{API}/orders", json=ORDER, headers=bearer(key))
    assert len(instruments["items"]) == 2  # reference data comes with any key
    assert submit["status"] == over_http.status_code == 403
    assert submit["detail"] == over_http.json()["detail"]
    assert submit["detail"] == "Your key lacks the scope orders:write, needed to submit orders."
    assert submit["missing_scope"] == "orders:write"
    assert clients["missing_scope"] == "clients:read"


# --- errors are problems, as over HTTP --------------------------------------------------------


async def test_tool_errors_carry_the_http_problem_detail(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast
) -> None:
    invalid = {**ORDER, "quantity": "-5", "side": "HOLD"}
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        bad_fields = problem_of(await agent.call_tool("submit_order", invalid))
        bad_lot = problem_of(await agent.call_tool("submit_order", {**ORDER, "quantity": "0.5"}))
        missing = problem_of(await agent.call_tool("get_order", {"order_id": 999}))
        order = order_of(await agent.call_tool("submit_order", ORDER))
        review = {"order_id": order["id"], "recommendation": "REJECT", "note": "n"}
        order_of(await agent.call_tool("review_order", review))
        twice = problem_of(await agent.call_tool("review_order", review))
        stale = problem_of(
            await agent.call_tool("cancel_order", {"order_id": order["id"], "expected_version": 1})
        )
    http = {
        "fields": await client.post(f"{API}/orders", json=invalid, headers=cast["agent"]),
        "lot": await client.post(
            f"{API}/orders",
            json={**ORDER, "quantity": "0.5", "client_order_id": "x"},
            headers=cast["agent"],
        ),
        "missing": await client.get(f"{API}/orders/999", headers=cast["agent"]),
        "twice": await client.post(
            f"{API}/orders/{order['id']}/review", json={"note": "n"}, headers=cast["agent"]
        ),
    }
    for tool_problem, key in ((bad_fields, "fields"), (bad_lot, "lot"), (missing, "missing")):
        assert tool_problem["detail"] == http[key].json()["detail"], key
        assert tool_problem["status"] == http[key].status_code, key
        assert tool_problem["type"] == http[key].json()["type"], key
    assert {e["field"] for e in bad_fields["errors"]} == {"quantity", "side"}
    assert twice["detail"] == http["twice"].json()["detail"]
    assert twice["type"].endswith("/illegal-transition")
    assert stale["type"].endswith("/stale-version") and stale["current_version"] == 2
    assert bad_fields["instance"] == "/mcp/tools/submit_order" and bad_fields["request_id"]


async def test_an_agents_order_without_a_price_is_refused_not_sent_to_market(
    live_server: LiveServer, cast: Cast
) -> None:
    unpriced = {k: v for k, v in ORDER.items() if k != "price"}
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        refused = problem_of(await agent.call_tool("submit_order", unpriced))
        market = order_of(
            await agent.call_tool(
                "submit_order", {**unpriced, "order_type": "MARKET", "client_order_id": "m-1"}
            )
        )
        tools = {tool.name: tool for tool in (await agent.list_tools()).tools}
    assert refused["status"] == 422
    assert [e["message"] for e in refused["errors"]] == [
        "a LIMIT order needs a price; send order_type MARKET to trade at market"
    ]
    assert (market["order_type"], market["price"]) == ("MARKET", None)
    order_type = tools["submit_order"].input_schema["properties"]["order_type"]
    assert order_type["default"] == "LIMIT" and "MARKET" in order_type["description"]


# --- the audit trail -----------------------------------------------------------------------


async def test_every_tool_call_is_audited_with_the_key_id(
    live_server: LiveServer, cast: Cast, owner_engine: AsyncEngine
) -> None:
    key_id = await agent_key_id(owner_engine, cast)
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        order = order_of(await agent.call_tool("submit_order", ORDER))
        order_of(await agent.call_tool("get_order", {"order_id": order["id"]}))
        problem_of(await agent.call_tool("get_order", {"order_id": 999}))
        problem_of(await agent.call_tool("approve_order", {"order_id": order["id"]}))
    events = await tool_audit_events(owner_engine)
    assert [e.action for e in events] == [
        "mcp.tool.submit_order",
        "mcp.tool.get_order",
        "mcp.tool.get_order",
        "mcp.tool.unknown",
    ]
    for event in events:
        assert event.api_key_id == key_id
        assert event.actor == f"user:{cast.ids['agent']}/key:{key_id}"
        assert (event.entity, event.entity_id) == ("api_key", str(key_id))
        assert event.after["transport"] == "http" and event.request_id
    submitted, read, missing, unknown = (e.after for e in events)
    assert submitted["arguments"] == ORDER and submitted["outcome"] == "succeeded"
    assert read["outcome"] == "succeeded"
    assert missing["outcome"] == "failed" and missing["problem"]["status"] == 404
    assert unknown["tool"] == "approve_order" and unknown["problem"]["slug"] == "unknown-tool"
    # Written in the tool's own transaction: the order's events carry the same request id.
    async with owner_engine.connect() as conn:
        created_request = await conn.scalar(
            text("SELECT request_id FROM audit_events WHERE action = 'order.created'")
        )
    assert created_request == events[0].request_id


async def test_a_failed_write_is_rolled_back_but_still_audited(
    live_server: LiveServer, cast: Cast, owner_engine: AsyncEngine
) -> None:
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        problem_of(await agent.call_tool("submit_order", {**ORDER, "symbol": "NOPE"}))
    async with owner_engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM orders")) == 0
        assert await conn.scalar(text("SELECT count(*) FROM procrastinate_jobs")) == 0
    [event] = await tool_audit_events(owner_engine)
    assert event.action == "mcp.tool.submit_order"
    assert event.after["outcome"] == "failed"
    assert event.after["problem"]["detail"] == "Unknown symbol NOPE."


# --- stdio ---------------------------------------------------------------------------------


def stdio_server(database_url: str, key: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "tradeops.cli", "mcp"],
        env={
            "TRADEOPS_DATABASE_URL": database_url,
            "TRADEOPS_API_KEY": key,
            "TRADEOPS_ENV": "test",
            "TRADEOPS_MAINTENANCE": "false",
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
        },
    )


async def test_tradeops_mcp_serves_the_tools_over_stdio(
    cast: Cast, database_url: str, owner_engine: AsyncEngine
) -> None:
    key = cast["agent"]["Authorization"].removeprefix("Bearer ")
    async with Client(stdio_server(database_url, key)) as agent:
        names = {tool.name for tool in (await agent.list_tools()).tools}
        clients = order_of(await agent.call_tool("list_clients", {}))
        order = order_of(await agent.call_tool("submit_order", ORDER))
        refused = problem_of(await agent.call_tool("get_order", {"order_id": 999}))
        # The key is checked again in every call: revoked while the process runs, it stops.
        async with owner_engine.begin() as conn:
            await conn.execute(text("UPDATE api_keys SET revoked_at = now()"))
        revoked = problem_of(await agent.call_tool("list_clients", {}))
    assert names == TOOLS
    assert [c["client_id"] for c in clients["items"]] == ["CUST-1001", "CUST-1002"]
    assert order["status"] == "PENDING" and order["created_by"] == "agent@test.bank"
    assert refused["status"] == 404
    assert revoked["status"] == 401 and "revoked" in revoked["detail"]
    events = await tool_audit_events(owner_engine)
    assert [e.after["transport"] for e in events] == ["stdio"] * 3
    assert {e.api_key_id for e in events} == {await agent_key_id(owner_engine, cast)}


async def test_tradeops_mcp_refuses_to_start_without_a_valid_key(
    cast: Cast, database_url: str
) -> None:
    with pytest.raises(Exception):  # noqa: B017 - the server exits before answering
        async with Client(
            stdio_server(database_url, "tro_abcdefghijkl_not-a-real-secret")
        ) as agent:
            await agent.list_tools()
