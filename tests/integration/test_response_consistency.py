"""One API, one style: every JSON body written the same way, every list in `items`, and no
API key granted a scope its owner's role could never use."""

from __future__ import annotations

import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import SEED_ORDER, Cast, approved_order, make_api_key
from tradeops.errors import InvalidRequest

API = "/api/v1"


def written_as_orjson_writes(body: bytes) -> bool:
    """True when the body is byte for byte what orjson writes for it: compact, no spaces."""
    return orjson.dumps(orjson.loads(body)) == body


async def test_the_portfolio_is_written_like_every_other_response(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    price = {"symbol": "MSFT", "price": "400", "as_of": "2026-11-23T10:00:00Z", "source": "t"}
    published = await client.post(
        f"{API}/market-data/snapshots", json={"snapshots": [price]}, headers=cast["admin"]
    )
    assert published.status_code == 201, published.text
    fill = {"venue": "XNAS", "executed_at": "2026-11-23T10:01:00Z"}
    for n, symbol in enumerate(("AAPL", "MSFT")):
        order_id = await approved_order(client, cast, owner_engine, symbol=symbol)
        filled = await client.post(
            f"{API}/orders/{order_id}/executions",
            json={**fill, "quantity": "50", "price": "192.55", "external_id": f"X-{n}"},
            headers=cast["admin"],
        )
        assert filled.status_code == 201, filled.text

    portfolio = await client.get(f"{API}/clients/CUST-1001/portfolio", headers=cast["trader"])
    empty = await client.get(f"{API}/clients/CUST-1002/portfolio", headers=cast["trader"])
    order = await client.get(f"{API}/orders/{order_id}", headers=cast["trader"])
    assert portfolio.status_code == empty.status_code == order.status_code == 200
    assert len(portfolio.json()["positions"]) == 2, portfolio.text
    for response in (order, portfolio, empty):
        assert written_as_orjson_writes(response.content), response.text
    assert b'" : ' not in portfolio.content and b", \n" not in portfolio.content


async def test_an_orders_events_come_as_items_like_every_other_list(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    created = await client.post(f"{API}/orders", json=SEED_ORDER, headers=cast["trader"])
    order_id = created.json()["id"]
    await client.post(f"{API}/orders/{order_id}/review", headers=cast["trader2"])
    events = await client.get(f"{API}/orders/{order_id}/events", headers=cast["trader"])
    assert events.status_code == 200, events.text
    assert list(events.json()) == ["items"]
    assert [e["type"] for e in events.json()["items"]] == ["CREATED", "REVIEWED"]
    schema = (await client.get("/openapi.json")).json()
    documented = schema["paths"][f"{API}/orders/{{order_id}}/events"]["get"]["responses"]["200"]
    ref = documented["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert list(schema["components"]["schemas"][ref]["properties"]) == ["items"]


# --- API key scopes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "scopes", "unusable"),
    [
        ("approver", ["orders:read", "executions:write"], "executions:write"),
        ("risk", ["orders:read", "orders:write"], "orders:write"),
        ("trader", ["audit:read"], "audit:read"),
        ("admin", ["orders:review"], "orders:review"),
    ],
)
async def test_a_key_cannot_be_granted_a_scope_its_owner_can_never_use(
    client: httpx.AsyncClient, cast: Cast, who: str, scopes: list[str], unusable: str
) -> None:
    body = {"name": "bot", "scopes": scopes}
    response = await client.post(f"{API}/api-keys", json=body, headers=cast[who])
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"][0]["field"] == "body.scopes"
    assert unusable in problem["detail"]
    assert "orders:read" in problem["usable_scopes"] and unusable not in problem["usable_scopes"]
    for scope in problem["usable_scopes"]:
        assert scope in problem["detail"], "the detail names every scope that would do"
    listed = await client.get(f"{API}/api-keys", headers=cast[who])
    assert "bot" not in [key["name"] for key in listed.json()], "nothing is created"


async def test_an_admin_making_a_key_for_an_agent_is_held_to_the_agents_role(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    body = {"name": "x", "scopes": ["audit:read"], "owner_email": "agent@test.bank"}
    response = await client.post(f"{API}/api-keys", json=body, headers=cast["admin"])
    assert response.status_code == 422, response.text
    assert "agent" in response.json()["detail"]
    # The command line (`tradeops api-keys create`) calls the same service as the system.
    with pytest.raises(InvalidRequest, match="executions:write"):
        await make_api_key(owner_engine, "trader@test.bank", ["executions:write"])


async def test_every_scope_an_owner_can_use_is_granted(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    body = {"name": "desk head", "scopes": ["orders:read", "orders:write", "orders:review"]}
    response = await client.post(f"{API}/api-keys", json=body, headers=cast["approver"])
    # An approver reviews and cancels orders of their desk; a key may do both for them.
    assert response.status_code == 201, response.text
