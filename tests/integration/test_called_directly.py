"""Issue 15 item 2: POST /orders calls its endpoint with arguments taken straight from the
request (db/http.py called_directly), skipping FastAPI's dependency solving, and leaves
every request not in that shape to FastAPI, whose answers stay exactly as documented."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import routing

from tests.factories import SEED_ORDER, Cast, keyed_intake_in_a_transaction

ORDERS = "/api/v1/orders"


@pytest.fixture
def solves(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths whose request FastAPI solved the dependencies of."""
    solved: list[str] = []
    solve = routing.solve_dependencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await solve(*args, **kwargs)

    monkeypatch.setattr(routing, "solve_dependencies", counted)
    yield solved


async def test_a_valid_order_is_submitted_without_solving_dependencies(
    client: httpx.AsyncClient, cast: Cast, solves: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    keyed_intake_in_a_transaction(monkeypatch)  # a key's order in a transaction (0038)
    created = await client.post(
        ORDERS, json=SEED_ORDER, headers={**cast["agent"], "Idempotency-Key": "direct-1"}
    )
    assert created.status_code == 201, created.text
    assert created.json()["created_by"] == "agent@test.bank"
    replayed = await client.post(
        ORDERS, json=SEED_ORDER, headers={**cast["agent"], "Idempotency-Key": "direct-1"}
    )
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json() == created.json()
    assert solves == []


JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


# FastAPI reads the body before it solves anything: JSON it cannot parse is refused there.
@pytest.mark.parametrize(
    ("body", "headers", "solved"),
    [
        ('{"client_id": "CUST-1001"}', JSON, [ORDERS]),
        ("[]", JSON, [ORDERS]),
        ("client_id=CUST-1001", FORM, [ORDERS]),
        ("{not json", JSON, []),
    ],
)
async def test_a_body_that_does_not_validate_is_fastapis_to_refuse(
    client: httpx.AsyncClient,
    cast: Cast,
    solves: list[str],
    body: str,
    headers: dict[str, str],
    solved: list[str],
) -> None:
    answer = await client.post(ORDERS, content=body, headers={**cast["trader"], **headers})
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert solves == solved


async def test_a_valid_order_without_credentials_is_the_documented_401(
    client: httpx.AsyncClient, cast: Cast, solves: list[str]
) -> None:
    direct = await client.post(ORDERS, json=SEED_ORDER)
    solved = await client.post(ORDERS, json={"client_id": "CUST-1001"})
    assert direct.status_code == solved.status_code == 401
    assert direct.headers["www-authenticate"] == solved.headers["www-authenticate"]
    same = ("type", "title", "status", "detail")
    assert {k: direct.json()[k] for k in same} == {k: solved.json()[k] for k in same}
    assert solves == [ORDERS], "only the invalid body was solved by FastAPI"
