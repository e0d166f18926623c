"""Who may call what: every /api/v1 endpoint against every kind of caller, as one table.

Each row is an endpoint (with the request body it is sent) and the status each principal
gets. The rules behind the table (tradeops.auth.permissions):

- no credentials: 401 with a WWW-Authenticate challenge;
- a role that may not do the action: 403;
- a row on a desk the caller does not cover is not found (404), never forbidden, and an
  order for a client of another desk is an unknown client (422);
- API keys act as their owner narrowed to scopes and desks: a key never manages keys or
  users, and needs the scope of each action (reference data comes with any key).

Each test starts from empty tables, so every (endpoint, principal) pair runs on its own data.
"""

from __future__ import annotations

import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import PASSWORD, SEED_ORDER, Cast, bearer, make_api_key, pass_risk_check

API = "/api/v1"
PROBLEM = "application/problem+json"
PRINCIPALS = ("nobody", "trader", "trader_fi", "approver", "risk", "admin", "agent")

FI_ORDER = {**SEED_ORDER, "client_id": "CUST-2001"}
AMEND = {"quantity": "60", "price": "192.50"}
NEW_USER = {"email": "new.trader@test.bank", "name": "New", "role": "trader", "desks": ["EQ-US"]}
NEW_KEY = {"name": "my key", "scopes": ["orders:read"]}
NEW_CLIENT = {"client_id": "CUST-1003", "name": "Acme Pension Fund", "desk": "EQ-US"}
NEW_SYMBOL = {
    "symbol": "NVDA",
    "name": "NVIDIA Corp.",
    "currency": "USD",
    "lot_size": "1",
    "tick_size": "0.01",
}
NEW_DESK = {"code": "FX-GLOBAL", "name": "Global FX"}
NEW_HOOK = {
    "url": "https://hooks.example.com/t",
    "event_types": ["order.approved"],
    "desks": ["EQ-US"],
}
EQ_DESK = {"desks": ["EQ-US"]}
RENAME = {"name": "Renamed"}
RESTRICT = {"restricted": True}
DESK_LIMIT = {"desk": "EQ-US", "max_order_notional": "1000000", "fat_finger_pct": "5"}
POLICY = {"bands": [{"min_notional": "0", "approvals": 1}, {"min_notional": "1e6", "approvals": 2}]}
REASON = {"reason": "Outside the client's mandate"}
PRICE = {"symbol": "AAPL", "price": "192.55", "as_of": "2026-11-23T10:00:00Z", "source": "test"}
PRICES = {"snapshots": [PRICE]}
FILL = {
    "quantity": "10",
    "price": "192.5",
    "venue": "XNAS",
    "executed_at": "2026-11-23T14:30:00Z",
    "external_id": "XNAS-1",
}


@dataclass(frozen=True)
class Row:
    method: str
    path: str
    body: dict[str, Any] | None
    statuses: dict[str, int]
    label: str = ""

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}{f' ({self.label})' if self.label else ''}"


def row(
    method: str, path: str, body: dict[str, Any] | None, *statuses: int, label: str = ""
) -> Row:
    assert len(statuses) == len(PRINCIPALS)
    return Row(method, path, body, dict(zip(PRINCIPALS, statuses, strict=True)), label)


# Placeholders in paths: each is made afresh for each (row, principal) by ARRANGE, so a
# transition never finds its order already moved. {eq_order}, {fi_order}: PENDING orders of
# "trader" (EQ-US) and "trader_fi" (FI-EU); {eq_reviewed}, {fi_reviewed}: the same, REVIEWED;
# {eq_approved}: the trader's order, APPROVED; {trader2_order}, {agent_order}: PENDING EQ-US
# orders by trader2 and by the agent's key; {trader_key}: the trader's API key; {trader2}.
# fmt: off
MATRIX = [
    #   method    path                           body        none trad t_fi appr risk admn agnt
    row("GET",    "/auth/me",                    None,       401, 200, 200, 200, 200, 200, 200),
    row("GET",    "/users",                      None,       401, 403, 403, 403, 403, 200, 403),
    row("POST",   "/users",                      NEW_USER,   401, 403, 403, 403, 403, 201, 403),
    row("PUT",    "/users/{trader2}/desks",      EQ_DESK,    401, 403, 403, 403, 403, 200, 403),
    row("POST",   "/users/{trader2}/deactivate", None,       401, 403, 403, 403, 403, 200, 403),
    row("POST",   "/api-keys",                   NEW_KEY,    401, 201, 201, 201, 201, 201, 403),
    row("GET",    "/api-keys",                   None,       401, 200, 200, 200, 200, 200, 403),
    # The trader's own key: someone else's key is not found; admin may revoke any key.
    row("DELETE", "/api-keys/{trader_key}",      None,       401, 200, 404, 404, 404, 200, 403),
    row("GET",    "/orders",                     None,       401, 200, 200, 200, 200, 200, 200),
    row("POST",   "/orders",                     SEED_ORDER, 401, 201, 422, 403, 403, 403, 201,
        label="EQ-US client"),
    row("POST",   "/orders",                     FI_ORDER,   401, 422, 201, 403, 403, 403, 422,
        label="FI-EU client"),
    row("GET",    "/orders/{eq_order}",          None,       401, 200, 404, 200, 200, 200, 200),
    row("GET",    "/orders/{fi_order}",          None,       401, 404, 200, 404, 200, 200, 404),
    row("GET",    "/clients",                    None,       401, 200, 200, 200, 200, 200, 200),
    row("POST",   "/clients",                    NEW_CLIENT, 401, 403, 403, 403, 403, 201, 403),
    row("GET",    "/clients/CUST-1001",          None,       401, 200, 404, 200, 200, 200, 200),
    row("GET",    "/clients/CUST-2001",          None,       401, 404, 200, 404, 200, 200, 404),
    row("PATCH",  "/clients/CUST-1001",          RENAME,     401, 403, 403, 403, 403, 200, 403),
    row("GET",    "/instruments",                None,       401, 200, 200, 200, 200, 200, 200),
    row("POST",   "/instruments",                NEW_SYMBOL, 401, 403, 403, 403, 403, 201, 403),
    row("GET",    "/instruments/AAPL",           None,       401, 200, 200, 200, 200, 200, 200),
    # The restricted list is risk's (and admin's); the rest of an instrument is admin's only.
    row("PATCH",  "/instruments/AAPL",           RESTRICT,   401, 403, 403, 403, 200, 200, 403,
        label="restricted flag"),
    row("PATCH",  "/instruments/AAPL",           RENAME,     401, 403, 403, 403, 403, 200, 403,
        label="name"),
    row("GET",    "/desks",                      None,       401, 200, 200, 200, 200, 200, 200),
    row("POST",   "/desks",                      NEW_DESK,   401, 403, 403, 403, 403, 201, 403),
    # Maker-checker (tradeops.orders.workflow). A role that may never do the action is
    # refused (403) before the order is looked up; a desk the caller does not cover is 404;
    # then the order's status (409), then who it is (maker-checker, cancel by whom: 403).
    # Review: traders, approvers and agents (orders:review) of the desk; PENDING only.
    row("POST",   "/orders/{eq_order}/review",   None,       401, 200, 404, 200, 403, 403, 200),
    row("POST",   "/orders/{fi_order}/review",   None,       401, 404, 200, 404, 403, 403, 404),
    row("POST",   "/orders/{eq_reviewed}/review", None,      401, 409, 404, 409, 403, 403, 409,
        label="already reviewed"),
    # Approve: a signed-in approver of the desk, not the maker, REVIEWED only; never a key.
    row("POST",   "/orders/{eq_reviewed}/approve", None,     401, 403, 403, 200, 403, 403, 403),
    row("POST",   "/orders/{fi_reviewed}/approve", None,     401, 403, 403, 404, 403, 403, 403),
    row("POST",   "/orders/{eq_order}/approve",  None,       401, 403, 403, 409, 403, 403, 403,
        label="not reviewed"),
    # Reject: the same people as approval, PENDING or REVIEWED, with a required reason.
    row("POST",   "/orders/{eq_order}/reject",   REASON,     401, 403, 403, 200, 403, 403, 403),
    row("POST",   "/orders/{eq_reviewed}/reject", REASON,    401, 403, 403, 200, 403, 403, 403,
        label="reviewed"),
    row("POST",   "/orders/{fi_order}/reject",   REASON,     401, 403, 403, 404, 403, 403, 403),
    # Without a reason the body is invalid for everyone signed in: the body is validated
    # before the role is checked, so even roles that may never reject get 422 here.
    row("POST",   "/orders/{eq_order}/reject",   {},         401, 422, 422, 422, 422, 422, 422,
        label="no reason"),
    row("POST",   "/orders/{eq_approved}/reject", REASON,    401, 403, 403, 409, 403, 403, 403,
        label="approved"),
    # Cancel: the order's maker (or their key) or an approver of the desk; PENDING, REVIEWED
    # or APPROVED. The agent's key is not the trader's, so it may not cancel the trader's order.
    row("POST",   "/orders/{eq_order}/cancel",   None,       401, 200, 404, 200, 403, 403, 403),
    row("POST",   "/orders/{eq_reviewed}/cancel", None,      401, 200, 404, 200, 403, 403, 403,
        label="reviewed"),
    row("POST",   "/orders/{eq_approved}/cancel", None,      401, 200, 404, 200, 403, 403, 403,
        label="approved"),
    row("POST",   "/orders/{trader2_order}/cancel", None,    401, 403, 404, 200, 403, 403, 403,
        label="another trader's order"),
    row("POST",   "/orders/{agent_order}/cancel", None,      401, 403, 404, 200, 403, 403, 200,
        label="the agent's order"),
    row("POST",   "/orders/{fi_order}/cancel",   None,       401, 404, 200, 404, 403, 403, 404),
    # Amend (PATCH: the order becomes REPLACED, a new one PENDING): only the order's maker
    # (or their key with orders:write), from an open status; submitters' roles only.
    row("PATCH",  "/orders/{eq_order}",          AMEND,      401, 201, 404, 403, 403, 403, 403),
    row("PATCH",  "/orders/{eq_approved}",       AMEND,      401, 201, 404, 403, 403, 403, 403,
        label="approved"),
    row("PATCH",  "/orders/{agent_order}",       AMEND,      401, 403, 404, 403, 403, 403, 201,
        label="the agent's order"),
    row("PATCH",  "/orders/{fi_order}",          AMEND,      401, 404, 201, 403, 403, 403, 404),
    row("PATCH",  "/orders/{eq_cancelled}",      AMEND,      401, 409, 404, 403, 403, 403, 409,
        label="cancelled"),
    row("PATCH",  "/orders/{eq_expired}",        AMEND,      401, 409, 404, 403, 403, 403, 409,
        label="expired"),
    row("PATCH",  "/orders/{eq_order}",          {},         401, 422, 422, 422, 422, 422, 422,
        label="nothing to change"),
    # Cancel many: whoever may cancel; each order then answers as its single cancel would
    # (tests/integration/test_order_lifecycle.py), never another desk's.
    row("DELETE", "/orders?symbol={eq_symbol}",  None,       401, 207, 207, 207, 403, 403, 207),
    # By client_order_id: the caller's own order, or for an approver the desk's.
    row("GET",    "/orders:by_client_order_id?client_order_id={eq_client_order_id}", None,
        401, 200, 404, 200, 404, 404, 404),
    # An order's history is readable by whoever may read the order.
    row("GET",    "/orders/{eq_order}/events",   None,       401, 200, 404, 200, 200, 200, 200),
    row("GET",    "/orders/{fi_order}/events",   None,       401, 404, 200, 404, 200, 200, 404),
    # The audit trail is risk's and admin's.
    row("GET",    "/audit/events",               None,       401, 403, 403, 403, 200, 200, 403),
    row("POST",   "/audit/verify",               None,       401, 403, 403, 403, 200, 200, 403),
    row("POST",   "/audit/checkpoints",          None,       401, 403, 403, 403, 200, 200, 403),
    # Market data: admins publish (and admins' keys with marketdata:write); anyone reads.
    # {priced}: AAPL, with a price published by the admin.
    row("POST",   "/market-data/snapshots",      PRICES,     401, 403, 403, 403, 403, 201, 403),
    row("GET",    "/market-data/{priced}",       None,       401, 200, 200, 200, 200, 200, 200),
    row("GET",    "/market-data/AAPL",           None,       401, 404, 404, 404, 404, 404, 404,
        label="no price yet"),
    row("GET",    "/market-data/{priced}/history", None,     401, 200, 200, 200, 200, 200, 200),
    # Fills: operations (admins, and admins' keys with executions:write) record them, on
    # APPROVED or PARTIALLY_FILLED orders; whoever may read an order reads its fills.
    row("POST",   "/orders/{eq_approved}/executions", FILL,  401, 403, 403, 403, 403, 201, 403),
    row("POST",   "/orders/{eq_order}/executions", FILL,     401, 403, 403, 403, 403, 409, 403,
        label="not approved"),
    row("GET",    "/orders/{eq_order}/executions", None,     401, 200, 404, 200, 200, 200, 200),
    row("GET",    "/orders/{fi_order}/executions", None,     401, 404, 200, 404, 200, 200, 404),
    # Busts (issue 16.5): like fills, operations only, with a reason; {eq_fill}, {fi_fill}:
    # "<order>/executions/<fill>" of an order filled by the admin.
    row("POST",   "/orders/{eq_fill}/bust",      REASON,     401, 403, 403, 403, 403, 201, 403),
    row("POST",   "/orders/{fi_fill}/bust",      REASON,     401, 403, 403, 403, 403, 201, 403,
        label="FI-EU"),
    row("POST",   "/orders/{eq_fill}/bust",      {},         401, 422, 422, 422, 422, 422, 422,
        label="no reason"),
    row("GET",    "/positions?as_of=2100-01-01T00:00:00Z", None,
                                                             401, 200, 200, 200, 200, 200, 200,
        label="as of"),
    # Positions and portfolios: the client's desk (risk and admin every desk; positions:read).
    row("GET",    "/positions",                  None,       401, 200, 200, 200, 200, 200, 200),
    row("GET",    "/clients/CUST-1001/portfolio", None,      401, 200, 404, 200, 200, 200, 200),
    row("GET",    "/clients/CUST-2001/portfolio", None,      401, 404, 200, 404, 200, 200, 404),
    # Risk limits: risk sets them, risk and admin read them; no key does either.
    row("GET",    "/risk/limits",                None,       401, 403, 403, 403, 200, 200, 403),
    row("PUT",    "/risk/limits",                DESK_LIMIT, 401, 403, 403, 403, 200, 403, 403),
    # Expiry (issue 16.4): an expired order is never approved nor filled, whoever asks: 409
    # where the caller may otherwise act, 404 across desks, 403 for roles that never may.
    row("POST",   "/orders/{eq_expired}/approve", None,      401, 403, 403, 409, 403, 403, 403,
        label="expired"),
    row("POST",   "/orders/{fi_expired}/approve", None,      401, 403, 403, 404, 403, 403, 403,
        label="expired, other desk"),
    row("POST",   "/orders/{eq_approved_expired}/executions", FILL,
                                                             401, 403, 403, 403, 403, 409, 403,
        label="expired"),
    # Approval policies: risk and admin read and set them, for every desk; no key does.
    row("GET",    "/desks/EQ-US/approval-policy", None,      401, 403, 403, 403, 200, 200, 403),
    row("GET",    "/desks/FI-EU/approval-policy", None,      401, 403, 403, 403, 200, 200, 403),
    row("PUT",    "/desks/EQ-US/approval-policy", POLICY,    401, 403, 403, 403, 200, 200, 403),
    row("PUT",    "/desks/FI-EU/approval-policy", POLICY,    401, 403, 403, 403, 200, 200, 403),
    # Webhooks: admins, signed in (no key scope reaches them). {webhook}: an admin's endpoint.
    row("GET",    "/webhooks",                   None,       401, 403, 403, 403, 403, 200, 403),
    row("POST",   "/webhooks",                   NEW_HOOK,   401, 403, 403, 403, 403, 201, 403),
    row("GET",    "/webhooks/{webhook}",         None,       401, 403, 403, 403, 403, 200, 403),
    row("DELETE", "/webhooks/{webhook}",         None,       401, 403, 403, 403, 403, 200, 403),
    row("GET",    "/webhooks/{webhook}/deliveries", None,    401, 403, 403, 403, 403, 200, 403),
    # Approval waits for the pre-trade risk check to pass ({eq_unchecked}: reviewed, unchecked).
    row("POST",   "/orders/{eq_unchecked}/approve", None,    401, 403, 403, 409, 403, 403, 403,
        label="risk check pending"),
]
# fmt: on


# --- arranging what a row's path refers to -----------------------------------------------


@dataclass
class World:
    client: httpx.AsyncClient
    cast: Cast
    engine: AsyncEngine  # the owner's, to arrange what no endpoint does (a passed risk check)


async def submit(world: World, who: str, body: dict[str, Any]) -> int:
    response = await world.client.post(f"{API}/orders", json=body, headers=world.cast[who])
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def trader_key(world: World) -> int:
    response = await world.client.post(
        f"{API}/api-keys",
        json={"name": "trader bot", "scopes": ["orders:read"]},
        headers=world.cast["trader"],
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def trader2(world: World) -> int:
    return world.cast.ids["trader2"]


async def priced(world: World) -> str:
    response = await world.client.post(
        f"{API}/market-data/snapshots", json=PRICES, headers=world.cast["admin"]
    )
    assert response.status_code == 201, response.text
    return PRICE["symbol"]


async def webhook(world: World) -> int:
    response = await world.client.post(
        f"{API}/webhooks", json=NEW_HOOK, headers=world.cast["admin"]
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def decide(world: World, order_id: int, who: str, action: str) -> int:
    response = await world.client.post(f"{API}/orders/{order_id}/{action}", headers=world.cast[who])
    assert response.status_code == 200, response.text
    return order_id


async def reviewed(
    world: World, maker: str, body: dict[str, Any], reviewer: str, *, risk_checked: bool = True
) -> int:
    order_id = await submit(world, maker, body)
    if risk_checked:
        await pass_risk_check(world.engine, order_id)
    return await decide(world, order_id, reviewer, "review")


async def approved(world: World) -> int:
    order_id = await reviewed(world, "trader", SEED_ORDER, "trader2")
    return await decide(world, order_id, "approver", "approve")


async def expired(world: World, order_id: int) -> int:
    """The order's time passed and it expired, as the expiry job leaves it."""
    async with world.engine.begin() as conn:
        for change in ("expire_at = now() - interval '1 second'", "status = 'EXPIRED'"):
            await conn.execute(
                text(f"UPDATE orders SET {change} WHERE id = :id"),
                {"id": order_id},
            )
    return order_id


async def filled(world: World, maker: str, body: dict[str, Any], reviewer: str) -> str:
    """An order of `maker` approved and filled by the admin: "<order>/executions/<fill>"."""
    order_id = await reviewed(world, maker, body, reviewer)
    approver = "approver_fi" if maker.endswith("_fi") else "approver"
    await decide(world, order_id, approver, "approve")
    response = await world.client.post(
        f"{API}/orders/{order_id}/executions", json=FILL, headers=world.cast["admin"]
    )
    assert response.status_code == 201, response.text
    return f"{order_id}/executions/{response.json()['execution']['id']}"


async def reviewed_expired(world: World, maker: str, body: dict[str, Any], reviewer: str) -> int:
    return await expired(world, await reviewed(world, maker, body, reviewer))


async def approved_expired(world: World) -> int:
    return await expired(world, await approved(world))


async def cancelled(world: World) -> int:
    order_id = await submit(world, "trader", SEED_ORDER)
    return await decide(world, order_id, "trader", "cancel")


async def submitted_symbol(world: World) -> str:
    """An open order of each desk, so a bulk cancel has something to answer for (or not)."""
    await submit(world, "trader", SEED_ORDER)
    await submit(world, "trader_fi", FI_ORDER)
    return str(SEED_ORDER["symbol"])


async def submitted_client_order_id(world: World) -> str:
    await submit(world, "trader", {**SEED_ORDER, "client_order_id": "matrix-1"})
    return "matrix-1"


ARRANGE: dict[str, Callable[[World], Awaitable[int | str]]] = {
    "eq_order": lambda world: submit(world, "trader", SEED_ORDER),
    "fi_order": lambda world: submit(world, "trader_fi", FI_ORDER),
    # Reviewed by a trader, so the approver deciding on it has not touched it before.
    "eq_reviewed": lambda world: reviewed(world, "trader", SEED_ORDER, "trader2"),
    "fi_reviewed": lambda world: reviewed(world, "trader_fi", FI_ORDER, "trader_fi"),
    "eq_approved": approved,
    "eq_expired": lambda world: reviewed_expired(world, "trader", SEED_ORDER, "trader2"),
    "fi_expired": lambda world: reviewed_expired(world, "trader_fi", FI_ORDER, "trader_fi"),
    "eq_approved_expired": approved_expired,
    "eq_fill": lambda world: filled(world, "trader", SEED_ORDER, "trader2"),
    "fi_fill": lambda world: filled(world, "trader_fi", FI_ORDER, "trader_fi"),
    "eq_unchecked": lambda world: reviewed(
        world, "trader", SEED_ORDER, "trader2", risk_checked=False
    ),
    "trader2_order": lambda world: submit(world, "trader2", SEED_ORDER),
    "eq_cancelled": lambda world: cancelled(world),
    "eq_symbol": lambda world: submitted_symbol(world),
    "eq_client_order_id": lambda world: submitted_client_order_id(world),
    "agent_order": lambda world: submit(world, "agent", SEED_ORDER),
    "trader_key": trader_key,
    "trader2": trader2,
    "priced": priced,
    "webhook": webhook,
}


async def arrange(world: World, path: str) -> str:
    names = [field for _, field, _, _ in string.Formatter().parse(path) if field]
    return path.format(**{name: await ARRANGE[name](world) for name in names})


def assert_security_headers(response: httpx.Response, *, authenticated: bool) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    if authenticated:
        assert response.headers["cache-control"] == "no-store"


def assert_refused(response: httpx.Response, status: int) -> None:
    """A refusal is a problem document; a 401 also tells how to authenticate."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == status
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


# --- the matrix --------------------------------------------------------------------------


@pytest.mark.parametrize("who", PRINCIPALS)
@pytest.mark.parametrize("entry", MATRIX, ids=lambda entry: entry.id)
async def test_endpoint_answers_each_principal_as_the_permission_table_says(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, entry: Row, who: str
) -> None:
    path = await arrange(World(client, cast, owner_engine), entry.path)
    response = await client.request(
        entry.method, f"{API}{path}", json=entry.body, headers=cast[who]
    )
    expected = entry.statuses[who]
    assert response.status_code == expected, f"{who}: {entry.id} -> {response.text}"
    if expected >= 400:
        assert_refused(response, expected)
    assert_security_headers(response, authenticated=who != "nobody")


def test_matrix_rows_are_real_endpoints_and_every_endpoint_has_a_row(app: FastAPI) -> None:
    """Every row names a route that exists, and every /api/v1 route has a row: a route added
    without one fails here until it is given one. Sign-in is public, tested below."""
    routes = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith(API)
        for method in operations
    }
    placeholders = {
        "{eq_order}": "{order_id}",
        "{fi_order}": "{order_id}",
        "{eq_reviewed}": "{order_id}",
        "{eq_unchecked}": "{order_id}",
        "{fi_reviewed}": "{order_id}",
        "{eq_approved}": "{order_id}",
        "{eq_expired}": "{order_id}",
        "{fi_expired}": "{order_id}",
        "{eq_approved_expired}": "{order_id}",
        "{eq_fill}": "{order_id}/executions/{execution_id}",
        "{fi_fill}": "{order_id}/executions/{execution_id}",
        "?as_of=2100-01-01T00:00:00Z": "",
        "{trader2_order}": "{order_id}",
        "{agent_order}": "{order_id}",
        "{eq_cancelled}": "{order_id}",
        "{trader_key}": "{key_id}",
        "{trader2}": "{user_id}",
        "{priced}": "{symbol}",
        "{webhook}": "{webhook_id}",
        "CUST-1001": "{client_id}",
        "CUST-2001": "{client_id}",
        "AAPL": "{symbol}",
        "/desks/EQ-US/": "/desks/{code}/",
        "/desks/FI-EU/": "/desks/{code}/",
    }
    covered = set()
    for entry in MATRIX:
        path = entry.path
        for concrete, template in placeholders.items():
            path = path.replace(concrete, template)
        covered.add((entry.method, f"{API}{path.split('?')[0]}"))
    public = {("POST", f"{API}/auth/token"), ("GET", f"{API}/health-check/db")}
    # A stream never ends, and the in-process client waits for a whole response: its
    # principals are checked over a socket in test_order_event_stream.py.
    streamed = {("GET", f"{API}/orders/events/stream")}
    assert covered <= routes, f"rows for endpoints that do not exist: {covered - routes}"
    without_row = sorted(routes - public - streamed - covered)
    assert not without_row, f"endpoints missing from the authorization matrix: {without_row}"


async def test_anyone_may_sign_in_without_credentials(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    response = await client.post(
        f"{API}/auth/token", data={"username": "trader@test.bank", "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    assert_security_headers(response, authenticated=False)


async def test_token_response_is_never_cached(client: httpx.AsyncClient, cast: Cast) -> None:
    response = await client.post(
        f"{API}/auth/token", data={"username": "trader@test.bank", "password": PASSWORD}
    )
    assert response.status_code == 200
    assert response.headers.get("cache-control") == "no-store"


async def test_every_response_has_nosniff_even_unmatched_and_refused(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    refused = await client.get(f"{API}/orders", headers=bearer("garbage"))
    for response in (
        await client.get("/health/live"),
        await client.get(f"{API}/no-such-endpoint"),
        await client.get(f"{API}/orders"),
        refused,
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
    assert refused.status_code == 401
    assert refused.headers["cache-control"] == "no-store", "credentials were sent"


async def test_order_for_another_desks_client_looks_like_an_unknown_client(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    """No existence leak: CUST-2001 (FI-EU) and a client that does not exist read the same."""
    foreign = await client.post(f"{API}/orders", json=FI_ORDER, headers=cast["trader"])
    missing = await client.post(
        f"{API}/orders", json={**SEED_ORDER, "client_id": "CUST-9999"}, headers=cast["trader"]
    )
    assert_refused(foreign, 422)
    assert_refused(missing, 422)
    assert foreign.json()["errors"] == [
        {"field": "body.client_id", "message": "Unknown client CUST-2001."}
    ]
    assert missing.json()["errors"][0]["message"] == "Unknown client CUST-9999."
    assert_refused(await client.get(f"{API}/clients/CUST-2001", headers=cast["trader"]), 404)


# --- what each principal sees in lists ---------------------------------------------------

VISIBLE_DESKS = {
    "trader": {"EQ-US"},
    "trader_fi": {"FI-EU"},
    "approver": {"EQ-US"},
    "risk": {"EQ-US", "FI-EU"},
    "admin": {"EQ-US", "FI-EU"},
    "agent": {"EQ-US"},
}


@pytest.mark.parametrize("who", list(VISIBLE_DESKS))
async def test_lists_show_only_the_desks_a_principal_covers(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, who: str
) -> None:
    world = World(client, cast, owner_engine)
    ids = {"EQ-US": await submit(world, "trader", SEED_ORDER)}
    ids["FI-EU"] = await submit(world, "trader_fi", FI_ORDER)
    orders = await client.get(f"{API}/orders", headers=cast[who])
    assert orders.status_code == 200
    assert {o["id"] for o in orders.json()["items"]} == {ids[d] for d in VISIBLE_DESKS[who]}
    clients = await client.get(f"{API}/clients", headers=cast[who])
    assert {c["desk"] for c in clients.json()["items"]} == VISIBLE_DESKS[who]


# --- API keys ------------------------------------------------------------------------------


async def expire_key(engine: AsyncEngine, key_id: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = :id"),
            {"id": key_id},
        )


async def test_expired_api_key_is_unauthenticated(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    key_id, key = await make_api_key(
        owner_engine, "trader@test.bank", ["orders:read"], expires_in_days=1
    )
    assert (await client.get(f"{API}/orders", headers=bearer(key))).status_code == 200
    await expire_key(owner_engine, key_id)
    for headers in (bearer(key), {"X-API-Key": key}):
        response = await client.get(f"{API}/orders", headers=headers)
        assert_refused(response, 401)
        assert_security_headers(response, authenticated=True)


@pytest.mark.parametrize("revoker", ["trader", "admin"])
async def test_revoked_api_key_is_unauthenticated(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, revoker: str
) -> None:
    key_id, key = await make_api_key(owner_engine, "trader@test.bank", ["orders:read"])
    assert (await client.get(f"{API}/auth/me", headers=bearer(key))).status_code == 200
    revoked = await client.delete(f"{API}/api-keys/{key_id}", headers=cast[revoker])
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    assert_refused(await client.get(f"{API}/auth/me", headers=bearer(key)), 401)
    assert_refused(await client.get(f"{API}/orders", headers={"X-API-Key": key}), 401)


async def test_a_key_cannot_revoke_keys_not_even_itself(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    key_id, key = await make_api_key(owner_engine, "trader@test.bank", ["orders:read"])
    assert_refused(await client.delete(f"{API}/api-keys/{key_id}", headers=bearer(key)), 403)
    assert (await client.get(f"{API}/auth/me", headers=bearer(key))).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/orders", SEED_ORDER),
        ("GET", "/orders", None),
        ("GET", "/clients", None),
        ("GET", "/clients/CUST-1001", None),
    ],
)
async def test_key_without_the_needed_scope_is_forbidden(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    _, key = await make_api_key(owner_engine, "trader@test.bank", ["reference:read"])
    response = await client.request(method, f"{API}{path}", json=body, headers=bearer(key))
    assert_refused(response, 403)


async def test_reference_data_comes_with_any_key(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    _, key = await make_api_key(owner_engine, "trader@test.bank", ["orders:read"])
    for path in ("/instruments", "/instruments/AAPL", "/desks"):
        assert (await client.get(f"{API}{path}", headers=bearer(key))).status_code == 200


async def test_write_scope_does_not_grant_read(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    _, key = await make_api_key(owner_engine, "trader@test.bank", ["orders:write"])
    created = await client.post(f"{API}/orders", json=SEED_ORDER, headers=bearer(key))
    assert created.status_code == 201, created.text
    assert_refused(
        await client.get(f"{API}/orders/{created.json()['id']}", headers=bearer(key)), 403
    )


async def test_key_narrowed_to_another_desk_sees_nothing_of_its_owners_desk(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """A key narrows its owner's desks, it can never widen them: a trader on EQ-US cannot get
    a key for FI-EU, and a key for EQ-US sees nothing once its owner has moved to FI-EU."""
    world = World(client, cast, owner_engine)
    eq_order = await submit(world, "trader", SEED_ORDER)
    fi_order = await submit(world, "trader_fi", FI_ORDER)
    widen = {"name": "wider", "scopes": ["orders:read"], "desks": ["FI-EU"]}
    assert_refused(await client.post(f"{API}/api-keys", json=widen, headers=cast["trader"]), 422)
    _, key = await make_api_key(
        owner_engine,
        "trader@test.bank",
        ["orders:read", "orders:write", "clients:read"],
        desks=["EQ-US"],
    )
    moved = await client.put(
        f"{API}/users/{cast.ids['trader']}/desks", json={"desks": ["FI-EU"]}, headers=cast["admin"]
    )
    assert moved.status_code == 200
    headers = bearer(key)
    me = await client.get(f"{API}/auth/me", headers=headers)
    assert me.json()["desk_ids"] == []
    listed = await client.get(f"{API}/orders", headers=headers)
    assert listed.status_code == 200
    assert listed.json()["items"] == []
    for order_id in (eq_order, fi_order):
        assert_refused(await client.get(f"{API}/orders/{order_id}", headers=headers), 404)
    assert (await client.get(f"{API}/clients", headers=headers)).json()["items"] == []
    assert_refused(await client.get(f"{API}/clients/CUST-1001", headers=headers), 404)
    for body in (SEED_ORDER, FI_ORDER):
        assert_refused(await client.post(f"{API}/orders", json=body, headers=headers), 422)


async def test_risk_key_narrowed_to_one_desk_sees_only_that_desk(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    world = World(client, cast, owner_engine)
    eq_order = await submit(world, "trader", SEED_ORDER)
    fi_order = await submit(world, "trader_fi", FI_ORDER)
    _, key = await make_api_key(owner_engine, "risk@test.bank", ["orders:read"], desks=["FI-EU"])
    listed = await client.get(f"{API}/orders", headers=bearer(key))
    assert [o["id"] for o in listed.json()["items"]] == [fi_order]
    assert_refused(await client.get(f"{API}/orders/{eq_order}", headers=bearer(key)), 404)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/users", None),
        ("POST", "/users", NEW_USER),
        ("POST", "/desks", NEW_DESK),
        ("POST", "/clients", NEW_CLIENT),
        ("PATCH", "/instruments/AAPL", RESTRICT),
        ("POST", "/api-keys", NEW_KEY),
        ("GET", "/api-keys", None),
    ],
)
async def test_an_admins_key_cannot_do_admin_things(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    _, key = await make_api_key(
        owner_engine, "admin@test.bank", ["orders:read", "clients:read", "reference:read"]
    )
    response = await client.request(method, f"{API}{path}", json=body, headers=bearer(key))
    assert_refused(response, 403)


async def test_key_via_either_header_is_not_cacheable(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    key = cast["agent"]["Authorization"].removeprefix("Bearer ")
    for headers in (bearer(key), {"X-API-Key": key}):
        response = await client.get(f"{API}/orders", headers=headers)
        assert response.status_code == 200
        assert_security_headers(response, authenticated=True)


# --- deactivated users ---------------------------------------------------------------------


async def test_deactivated_users_token_and_keys_are_unauthenticated(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    _, key = await make_api_key(owner_engine, "trader@test.bank", ["orders:read"])
    assert (await client.get(f"{API}/auth/me", headers=cast["trader"])).status_code == 200
    done = await client.post(f"{API}/users/{cast.ids['trader']}/deactivate", headers=cast["admin"])
    assert done.status_code == 200
    for headers in (cast["trader"], bearer(key)):
        assert_refused(await client.get(f"{API}/auth/me", headers=headers), 401)
        assert_refused(await client.get(f"{API}/orders", headers=headers), 401)


async def test_deactivating_an_agent_stops_its_key(client: httpx.AsyncClient, cast: Cast) -> None:
    done = await client.post(f"{API}/users/{cast.ids['agent']}/deactivate", headers=cast["admin"])
    assert done.status_code == 200
    assert_refused(await client.post(f"{API}/orders", json=SEED_ORDER, headers=cast["agent"]), 401)


# --- writes that change nothing still need the right to write ------------------------------


@pytest.mark.parametrize("who", ["trader", "approver", "agent"])
async def test_empty_instrument_patch_still_needs_the_right_to_change_instruments(
    client: httpx.AsyncClient, cast: Cast, who: str
) -> None:
    """An empty PATCH changes nothing, but a role that may not change instruments gets 403,
    not a 200 that reads like a successful write in access logs."""
    response = await client.patch(f"{API}/instruments/AAPL", json={}, headers=cast[who])
    assert response.status_code == 403, response.text
