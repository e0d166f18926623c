"""Input found by fuzzing the OpenAPI schema (schemathesis): each must be a 4xx problem."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from tests.factories import SEED_ORDER, Cast
from tests.pages import csrf_of, sign_in

API = "/api/v1"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"{API}/orders/9223372036854775808"),
        ("GET", f"{API}/orders/-9223372036854775809"),
        ("POST", f"{API}/orders/9223372036854775808/cancel"),
        ("DELETE", f"{API}/api-keys/9223372036854775808"),
        ("GET", f"{API}/orders?desk=a%00b"),
        ("GET", f"{API}/orders?created_from=0001-01-01T00:00:00%2B01:00"),
        ("GET", f"{API}/audit/events?at_to=9999-12-31T23:59:59-14:00"),
        ("GET", f"{API}/clients/CUST%001001"),
    ],
)
async def test_out_of_range_and_nul_input_is_422(
    client: httpx.AsyncClient, cast: Cast, method: str, path: str
) -> None:
    response = await client.request(method, path, headers=cast["admin"])
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_nul_in_a_note_or_sign_in_is_422(client: httpx.AsyncClient, cast: Cast) -> None:
    order = (await client.post(f"{API}/orders", json=SEED_ORDER, headers=cast["trader"])).json()
    cancel = await client.post(
        f"{API}/orders/{order['id']}/cancel", json={"reason": "a\u0000b"}, headers=cast["trader"]
    )
    assert cancel.status_code == 422
    sign_in = await client.post(
        f"{API}/auth/token", data={"username": "a\x00b@test.bank", "password": "x"}
    )
    assert sign_in.status_code == 422


async def test_openapi_documents_errors_as_problems(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "HTTPValidationError" not in str(schema)
    for path in schema["paths"].values():
        for operation in path.values():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (
                        operation["operationId"],
                        status,
                    )
            if operation.get("security"):
                assert "401" in operation["responses"], operation["operationId"]


@pytest.mark.parametrize(
    "path",
    [
        # '²' and '¹' pass str.isdigit() and fail int(): they were 500s.
        f"{API}/orders?after=%C2%B2",
        f"{API}/orders?after=1%C2%B2",
        f"{API}/audit/events?after=%C2%B9",
        f"{API}/audit/events?after=%D9%A3",  # ARABIC-INDIC DIGIT THREE: int() accepts it
        f"{API}/positions?after=%D9%A3.1",  # and a regular expression's \d matches it
        f"{API}/market-data/AAPL/history?after=1.%D9%A3",
    ],
)
async def test_a_cursor_of_non_ascii_digits_is_422(
    client: httpx.AsyncClient, cast: Cast, path: str
) -> None:
    response = await client.get(path, headers=cast["risk"])
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == "query.after"


@pytest.mark.parametrize("version", ["²", "1²", "٣", "x", "9" * 12])
async def test_a_page_form_version_that_is_not_ascii_digits_is_422(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, version: str
) -> None:
    order_id = (await client.post(f"{API}/orders", json=SEED_ORDER, headers=cast["trader"])).json()[
        "id"
    ]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as approver:
        assert (await sign_in(approver, "approver@test.bank")).status_code == 303
        page = f"/ui/orders/{order_id}"
        token = csrf_of((await approver.get(page)).text)
        response = await approver.post(
            f"{page}/review", data={"csrf_token": token, "version": version}
        )
    assert response.status_code == 422, response.text
    assert "version" in response.text


async def test_openapi_links_lead_from_a_submitted_order_to_its_approval(
    client: httpx.AsyncClient,
) -> None:
    """The links schemathesis' stateful phase (make faults) follows: submit → get → review →
    approve, each taking the order id from the answer before."""
    schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    order = "/api/v1/orders/{order_id}"
    steps = [
        (paths["/api/v1/orders"]["post"], "201", "GetOrder"),
        (paths[order]["get"], "200", "ReviewOrder"),
        (paths[f"{order}/review"]["post"], "200", "ApproveOrder"),
    ]
    for operation, status, link_name in steps:
        link = operation["responses"][status]["links"][link_name]
        assert link["parameters"] == {"order_id": "$response.body#/id"}
        target_path, method = link["operationRef"].removeprefix("#/paths/").rsplit("/", 1)
        assert method in paths[target_path.replace("~1", "/")]
