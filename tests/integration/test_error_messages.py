"""Refusals that say how to fix the request: each problem names what to send or do instead.

A client (or an agent reading the problem) must be able to act on the detail alone: the
header to send, where the JSON breaks, the step an order still needs, why its risk check
failed, that a token only expired.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import PASSWORD, SEED_ORDER, Cast, bearer, pass_risk_check
from tradeops.settings import Settings

API = "/api/v1"
ORDERS = f"{API}/orders"
JSON = {"content-type": "application/json"}


def messages(response: httpx.Response) -> list[str]:
    return [error["message"] for error in response.json().get("errors", [])]


# --- validator messages ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "path", "body", "message"),
    [
        (
            "trader",
            ORDERS,
            {**SEED_ORDER, "order_type": "LIMIT", "price": None},
            "a LIMIT order needs a price; send order_type MARKET to trade at market",
        ),
        ("trader", ORDERS, {**SEED_ORDER, "order_type": "MARKET"}, "a MARKET order takes no price"),
        (
            "risk",
            f"{API}/risk/limits",
            {"desk": "EQ-US", "client_id": "CUST-1001", "max_position": "10"},
            "give exactly one of desk or client_id",
        ),
        (
            "admin",
            f"{API}/market-data/snapshots",
            {
                "snapshots": [
                    {
                        "symbol": "AAPL",
                        "price": "10",
                        "bid": "11",
                        "ask": "10.5",
                        "as_of": "2026-11-23T10:00:00Z",
                        "source": "t",
                    }
                ]
            },
            "ask must not be below bid",
        ),
    ],
    ids=["limit-without-price", "market-with-price", "risk-limit-holder", "ask-below-bid"],
)
async def test_validator_messages_are_the_rule_without_pydantics_prefix(
    client: httpx.AsyncClient, cast: Cast, who: str, path: str, body: Any, message: str
) -> None:
    send = client.put if path.endswith("/limits") else client.post
    response = await send(path, json=body, headers=cast[who])
    assert response.status_code == 422, response.text
    assert messages(response) == [message]


# --- the body: media type and JSON syntax ----------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain"])
async def test_json_without_its_content_type_says_to_send_application_json(
    client: httpx.AsyncClient, cast: Cast, content_type: str | None
) -> None:
    headers = {**cast["trader"], **({"content-type": content_type} if content_type else {})}
    body = b'{"client_id": "CUST-1001", "symbol": "AAPL", "side": "BUY", "quantity": 1}'
    response = await client.post(ORDERS, content=body, headers=headers)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert "Content-Type: application/json" in problem["detail"], problem
    assert problem["errors"] == [{"field": "header.Content-Type", "message": problem["detail"]}]
    assert not any("valid dictionary" in m for m in messages(response))


async def test_malformed_json_names_the_line_and_column(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    body = b'{\n  "client_id": "CUST-1001",\n  "symbol": "AAPL",\n  "side": BUY\n}'
    response = await client.post(ORDERS, content=body, headers={**cast["trader"], **JSON})
    assert response.status_code == 422, response.text
    problem = response.json()
    [error] = problem["errors"]
    assert error["field"] == "body"
    assert error["message"] == "The body is not valid JSON: Expecting value at line 4, column 11."
    assert "line 4, column 11" in problem["detail"]


async def test_sign_in_sent_as_json_says_it_is_a_form(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    response = await client.post(
        f"{API}/auth/token", json={"username": "trader@test.bank", "password": PASSWORD}
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert "application/x-www-form-urlencoded" in problem["detail"], problem
    assert "form" in problem["detail"]
    assert not any(m == "Field required" for m in messages(response)), problem


async def test_a_json_request_with_a_field_error_keeps_its_field_errors(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    response = await client.post(
        ORDERS, json={**SEED_ORDER, "side": "HOLD"}, headers=cast["trader"]
    )
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["body.side"]


# --- tokens ----------------------------------------------------------------------------------


async def test_an_expired_token_says_it_expired_and_to_sign_in_again(
    client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    now = int(time.time())
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": str(cast.ids["trader"]),
        "iat": now - 3600,
        "exp": now - 600,
    }
    expired = jwt.encode(claims, settings.secret_key.get_secret_value(), algorithm="HS256")
    response = await client.get(f"{API}/auth/me", headers=bearer(expired))
    garbage = await client.get(f"{API}/auth/me", headers=bearer("a.b.c"))
    assert response.status_code == garbage.status_code == 401
    problem = response.json()
    assert problem["type"].endswith("/token-expired")
    assert "expired" in problem["detail"] and "sign in again" in problem["detail"]
    assert problem["detail"] != garbage.json()["detail"]
    assert garbage.json()["type"].endswith("/unauthenticated")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


# --- the maker-checker steps -----------------------------------------------------------------


async def submitted(client: httpx.AsyncClient, cast: Cast) -> int:
    response = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def test_approving_a_pending_order_says_it_needs_a_review_first(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await submitted(client, cast)
    await pass_risk_check(owner_engine, order_id)
    response = await client.post(f"{ORDERS}/{order_id}/approve", headers=cast["approver"])
    assert response.status_code == 409, response.text
    problem = response.json()
    assert problem["type"].endswith("/illegal-transition")
    assert "needs a review first" in problem["detail"], problem


async def fail_risk_check(engine: AsyncEngine, order_id: int, reasons: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE orders SET risk_status = 'FAILED', risk_reasons = CAST(:r AS jsonb)"
                " WHERE id = :id"
            ),
            {"r": reasons, "id": order_id},
        )


@pytest.mark.parametrize("reviewed", [True, False], ids=["reviewed", "pending"])
async def test_approving_a_failed_order_lists_the_reasons_in_the_detail(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, reviewed: bool
) -> None:
    order_id = await submitted(client, cast)
    if reviewed:
        review = await client.post(f"{ORDERS}/{order_id}/review", headers=cast["trader2"])
        assert review.status_code == 200, review.text
    reasons = (
        '[{"code": "RESTRICTED_INSTRUMENT", "message": "AAPL is on the restricted list."},'
        ' {"code": "NO_MARKET_PRICE", "message": "No market price for AAPL."}]'
    )
    await fail_risk_check(owner_engine, order_id, reasons)
    response = await client.post(f"{ORDERS}/{order_id}/approve", headers=cast["approver"])
    assert response.status_code == 409, response.text
    problem = response.json()
    # Even before a review: no review can mend a failed check, so that is what to hear.
    assert problem["type"].endswith("/risk-check-failed"), problem
    assert "AAPL is on the restricted list." in problem["detail"], problem
    assert "No market price for AAPL." in problem["detail"]
    assert [r["code"] for r in problem["risk_reasons"]] == [
        "RESTRICTED_INSTRUMENT",
        "NO_MARKET_PRICE",
    ]
