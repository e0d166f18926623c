"""Order intake over HTTP: the seed body, reads, listing, and every validation rule failing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import SEED_ORDER, Cast, make_client, make_instrument

ORDERS = "/api/v1/orders"


@pytest.fixture
async def refdata(client: httpx.AsyncClient, cast: Cast) -> None:
    """Reference data and people; the client acts as an EQ-US trader."""
    client.headers.update(cast["trader"])


def order(**changes: Any) -> dict[str, Any]:
    body = {**SEED_ORDER, **changes}
    return {k: v for k, v in body.items() if v is not ...}


async def test_seed_body_creates_pending_order(client: httpx.AsyncClient, refdata: None) -> None:
    response = await client.post(ORDERS, json=SEED_ORDER)
    assert response.status_code == 201, response.text
    created = response.json()
    assert isinstance(created["id"], int)
    assert created["status"] == "PENDING"
    assert created["risk_status"] == "PENDING"
    assert (created["order_type"], created["time_in_force"], created["currency"]) == (
        "LIMIT",
        "DAY",
        "USD",
    )
    assert (created["quantity"], created["price"]) == ("50", "192.55")
    assert response.headers["location"] == f"{ORDERS}/{created['id']}"

    fetched = await client.get(f"{ORDERS}/{created['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == created
    assert fetched.headers["etag"] == '"1"'


async def test_market_order_without_price(client: httpx.AsyncClient, refdata: None) -> None:
    body = order(price=..., order_type="market", side="sell", time_in_force="gtc")
    response = await client.post(ORDERS, json=body)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["order_type"], body["price"], body["side"], body["time_in_force"]) == (
        "MARKET",
        None,
        "SELL",
        "GTC",
    )


@pytest.mark.parametrize("price", [..., None], ids=["left-out", "null"])
async def test_an_order_without_a_price_is_never_made_a_market_order(
    client: httpx.AsyncClient, refdata: None, price: Any
) -> None:
    response = await client.post(ORDERS, json=order(price=price))
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {
            "field": "body",
            "message": "a LIMIT order needs a price; send order_type MARKET to trade at market",
        }
    ]
    assert (await client.get(ORDERS)).json()["items"] == [], "nothing may be recorded"


async def test_decimal_strings_are_accepted(client: httpx.AsyncClient, refdata: None) -> None:
    response = await client.post(ORDERS, json=order(quantity="10", price="100.10"))
    assert response.status_code == 201
    assert response.json()["price"] == "100.1"


async def test_missing_order_is_404_problem(client: httpx.AsyncClient, refdata: None) -> None:
    response = await client.get(f"{ORDERS}/424242")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("/order-not-found")
    assert {"title", "status", "detail", "instance", "request_id"} <= problem.keys()
    assert problem["request_id"] == response.headers["x-request-id"]


INVALID = [
    ("side_unknown", order(side="HOLD"), "body.side"),
    ("side_wrong_type", order(side=1), "body.side"),
    ("symbol_unknown", order(symbol="ZZZZ"), "body.symbol"),
    ("symbol_inactive", order(symbol="OLD"), "body.symbol"),
    ("symbol_bad_format", order(symbol="!!"), "body.symbol"),
    ("client_unknown", order(client_id="CUST-9999"), "body.client_id"),
    ("client_inactive", order(client_id="CUST-0001"), "body.client_id"),
    ("quantity_zero", order(quantity=0), "body.quantity"),
    ("quantity_negative", order(quantity=-5), "body.quantity"),
    ("quantity_not_lot_multiple", order(symbol="BLOCK"), "body.quantity"),
    ("quantity_fractional_lot", order(quantity="1.5"), "body.quantity"),
    ("quantity_huge", order(quantity="1e20"), "body.quantity"),
    ("quantity_nan", order(quantity="NaN"), "body.quantity"),
    ("quantity_infinity", order(quantity="Infinity"), "body.quantity"),
    ("quantity_wrong_type", order(quantity="fifty"), "body.quantity"),
    ("quantity_bool", order(quantity=True), "body.quantity"),
    ("quantity_missing", order(quantity=...), "body.quantity"),
    ("price_zero", order(price=0), "body.price"),
    ("price_negative", order(price=-1), "body.price"),
    ("price_not_tick_multiple", order(price="192.555"), "body.price"),
    ("price_too_precise", order(price="192.5500001"), "body.price"),
    ("price_huge", order(price=10**15), "body.price"),
    ("price_wrong_type", order(price=[1]), "body.price"),
    ("limit_without_price", order(price=..., order_type="LIMIT"), "body"),
    ("market_with_price", order(order_type="MARKET"), "body"),
    ("time_in_force_unknown", order(time_in_force="FOREVER"), "body.time_in_force"),
    ("unknown_field", order(account="X"), "body.account"),
    ("client_order_id_too_long", order(client_order_id="x" * 65), "body.client_order_id"),
]


@pytest.mark.parametrize(("case", "body", "field"), INVALID, ids=[c[0] for c in INVALID])
async def test_invalid_order_is_rejected_with_field_error(
    client: httpx.AsyncClient,
    owner_engine: AsyncEngine,
    refdata: None,
    case: str,
    body: dict[str, Any],
    field: str,
) -> None:
    await make_instrument(owner_engine, "OLD", active=False)
    await make_instrument(owner_engine, "BLOCK", lot_size="100")
    await make_client(owner_engine, "CUST-0001", status="INACTIVE")
    response = await client.post(ORDERS, json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert any(e["field"].startswith(field) for e in problem["errors"]), problem
    listed = await client.get(ORDERS)
    assert listed.json()["items"] == [], "a rejected order must leave nothing behind"


@pytest.mark.parametrize("raw", [b'{"quantity": NaN}', b"{not json", b"[]", b'"text"'])
async def test_malformed_json_is_422(client: httpx.AsyncClient, refdata: None, raw: bytes) -> None:
    response = await client.post(ORDERS, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_body_over_limit_is_413(client: httpx.AsyncClient, refdata: None) -> None:
    response = await client.post(ORDERS, json=order(client_order_id="a", pad="x" * 100_000))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_repeated_client_order_id_answers_the_recorded_order_or_409(
    client: httpx.AsyncClient, refdata: None
) -> None:
    first = await client.post(ORDERS, json=order(client_order_id="ABC-1"))
    assert first.status_code == 201
    # The same order again (a retry): the order recorded then, 200, nothing new.
    retried = await client.post(ORDERS, json=order(client_order_id="ABC-1"))
    assert retried.status_code == 200
    assert retried.json() == first.json()
    assert retried.headers["ETag"] == first.headers["ETag"]
    # Another order under the same id: a conflict naming the order.
    again = await client.post(ORDERS, json=order(client_order_id="ABC-1", quantity=7))
    assert again.status_code == 409
    problem = again.json()
    assert problem["existing_order_id"] == first.json()["id"]
    assert str(first.json()["id"]) in problem["detail"]


async def test_list_filters_and_keyset_pagination(
    client: httpx.AsyncClient, refdata: None, cast: Cast
) -> None:
    ids = []
    for n in range(5):
        created = await client.post(
            ORDERS, json=order(symbol="AAPL" if n % 2 else "MSFT", quantity=n + 1)
        )
        ids.append(created.json()["id"])
    other_desk = await client.post(
        ORDERS, json=order(client_id="CUST-2001"), headers=cast["trader_fi"]
    )
    assert other_desk.status_code == 201

    page1 = (await client.get(ORDERS, params={"limit": 2, "client_id": "CUST-1001"})).json()
    assert [o["id"] for o in page1["items"]] == [ids[4], ids[3]]
    page2 = (
        await client.get(
            ORDERS, params={"limit": 2, "client_id": "CUST-1001", "after": page1["next_cursor"]}
        )
    ).json()
    page3 = (
        await client.get(
            ORDERS, params={"limit": 2, "client_id": "CUST-1001", "after": page2["next_cursor"]}
        )
    ).json()
    assert [o["id"] for o in page2["items"]] == [ids[2], ids[1]]
    assert [o["id"] for o in page3["items"]] == [ids[0]]
    assert page3["next_cursor"] is None

    aapl = (await client.get(ORDERS, params={"symbol": "aapl", "client_id": "CUST-1001"})).json()
    assert {o["id"] for o in aapl["items"]} == {ids[1], ids[3]}
    pending = (await client.get(ORDERS, params={"status": "PENDING"})).json()
    assert len(pending["items"]) == 5, "the FI-EU order is not visible to an EQ-US trader"
    none = (await client.get(ORDERS, params={"status": "APPROVED"})).json()
    assert none["items"] == []
    future = (await client.get(ORDERS, params={"created_from": "2999-01-01T00:00:00Z"})).json()
    assert future["items"] == []
    past = (await client.get(ORDERS, params={"created_to": "2000-01-01T00:00:00Z"})).json()
    assert past["items"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"after": "abc"},
        {"status": "DONE"},
        {"created_from": "yesterday"},
    ],
)
async def test_bad_list_parameters_are_422(
    client: httpx.AsyncClient, refdata: None, params: dict[str, Any]
) -> None:
    response = await client.get(ORDERS, params=params)
    assert response.status_code == 422
    assert response.json()["errors"]


async def test_request_id_is_taken_from_header_and_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{ORDERS}/1", headers={"X-Request-ID": "trace-abc-123"})
    assert response.headers["x-request-id"] == "trace-abc-123"
    assert response.json()["request_id"] == "trace-abc-123"
    generated = await client.get(f"{ORDERS}/1", headers={"X-Request-ID": "bad id with spaces"})
    assert generated.headers["x-request-id"] != "bad id with spaces"
