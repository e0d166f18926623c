"""Issue 15, "a write needs at most two": a decision or an amendment sent with an
Idempotency-Key in one statement (migration 0043), with every property of the transaction it
replaced.

- It makes and stores what the transaction makes and stores: the same answer, the same
  history, the same response kept under the key (status, body, ETag, Location).
- A response stored either way is replayed either way, byte for byte and marked replayed;
  the key sent with another request is still the transaction's 422.
- A decision it does not make (a rule refuses it) is the transaction's answer, and neither
  the key nor the caller stays behind: the same key then serves the corrected request.
- The same keyed review sent three times at once is made once; the others replay it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pytest import MonkeyPatch
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import (
    Cast,
    caller_left_on_the_one_connection,
    keyed_writes_in_a_transaction,
    reviewed_order,
    submitted_order,
)
from tests.integration.test_one_statement_decisions import history
from tradeops.orders import workflow

ORDERS = "/api/v1/orders"
KEY_ROW = (
    "SELECT fingerprint, response_status, response_body, response_headers"
    " FROM idempotency_keys WHERE key = :key"
)


async def stored_under(engine: AsyncEngine, key: str) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(text(KEY_ROW), {"key": key})).mappings().one_or_none()
    return None if row is None else dict(row)


def without_id_and_times(document: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in document.items() if k not in {"id", "created_at", "updated_at"}}
    kept["approvals"] = [{**a, "approved_at": None} for a in kept["approvals"]]
    return kept


def made_in_one_statement(monkeypatch: MonkeyPatch) -> list[str]:
    """The keyed writes the one statement answered, counted."""
    made: list[str] = []
    for name in ("decide_once_in_one_statement", "amend_once_in_one_statement"):
        write = getattr(workflow, name)

        async def counted(*args: Any, write: Any = write, name: str = name) -> Any:
            answer = await write(*args)
            if answer[1] is not None:
                made.append(name)
            return answer

        monkeypatch.setattr(workflow, name, counted)
    return made


async def decide(
    client: httpx.AsyncClient, cast: Cast, decision: str, order_id: int, key: str, **said: Any
) -> httpx.Response:
    decider = "trader2" if decision == "review" else "approver"
    headers = cast[decider] | {"Idempotency-Key": key}
    return await client.post(f"{ORDERS}/{order_id}/{decision}", json=said, headers=headers)


@pytest.mark.parametrize(
    ("decision", "said"),
    [
        ("review", {"note": "looks fine"}),
        ("approve", {"note": "within limits"}),
        ("reject", {"reason": "too big"}),
        ("cancel", {"reason": "client withdrew"}),
    ],
)
async def test_a_keyed_decision_in_one_statement_is_made_and_stored_as_in_a_transaction(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    monkeypatch: MonkeyPatch,
    decision: str,
    said: dict[str, str],
) -> None:
    async def ready() -> int:
        if decision == "review":
            return int((await submitted_order(client, cast))["id"])
        return await reviewed_order(client, cast, owner_engine)

    first, second = await ready(), await ready()
    made = made_in_one_statement(monkeypatch)
    alone = await decide(client, cast, decision, first, "alone-1", **said)
    assert made == ["decide_once_in_one_statement"], "made in one statement"
    keyed_writes_in_a_transaction(monkeypatch)
    in_transaction = await decide(client, cast, decision, second, "in-transaction-1", **said)
    assert alone.status_code == in_transaction.status_code == 200, alone.text
    assert alone.headers["etag"] == in_transaction.headers["etag"]
    assert without_id_and_times(alone.json()) == without_id_and_times(in_transaction.json())
    shown = await client.get(f"{ORDERS}/{first}", headers=cast["approver"])
    assert alone.content == shown.content, "the answer is the order as GET shows it"
    one, other = await history(owner_engine, first), await history(owner_engine, second)
    assert one["events"][1:] == other["events"][1:] and one["audit"] == other["audit"]
    kept, as_before = (
        await stored_under(owner_engine, "alone-1"),
        await stored_under(owner_engine, "in-transaction-1"),
    )
    assert kept is not None and as_before is not None
    assert kept["response_status"] == as_before["response_status"] == 200
    assert kept["response_body"] == alone.content
    assert as_before["response_body"] == in_transaction.content
    assert kept["response_headers"] == {"ETag": alone.headers["etag"]}
    assert as_before["response_headers"] == {"ETag": in_transaction.headers["etag"]}


async def test_a_keyed_amendment_in_one_statement_is_made_and_stored_as_in_a_transaction(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, monkeypatch: MonkeyPatch
) -> None:
    body = {"quantity": "60", "price": "191.5"}
    first, second = await submitted_order(client, cast), await submitted_order(client, cast)
    made = made_in_one_statement(monkeypatch)

    async def amend(order: dict[str, Any], key: str) -> httpx.Response:
        headers = cast["trader"] | {"Idempotency-Key": key}
        return await client.patch(f"{ORDERS}/{order['id']}", json=body, headers=headers)

    alone = await amend(first, "amend-alone")
    assert made == ["amend_once_in_one_statement"]
    keyed_writes_in_a_transaction(monkeypatch)
    in_transaction = await amend(second, "amend-in-transaction")
    assert alone.status_code == in_transaction.status_code == 201, alone.text
    assert without_id_and_times(alone.json()) | {"replaces": None} == without_id_and_times(
        in_transaction.json()
    ) | {"replaces": None}
    for answer in (alone, in_transaction):
        kept = await stored_under(owner_engine, answer.request.headers["idempotency-key"])
        assert kept is not None
        assert kept["response_status"] == 201 and kept["response_body"] == answer.content
        assert kept["response_headers"] == {
            "ETag": answer.headers["etag"],
            "Location": f"{ORDERS}/{answer.json()['id']}",
        }
        assert answer.headers["location"] == f"{ORDERS}/{answer.json()['id']}"


async def test_a_key_stored_either_way_is_replayed_either_way(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, monkeypatch: MonkeyPatch
) -> None:
    """A review stored by the one statement is replayed by the transaction and the other way
    round: the first answer, byte for byte, marked replayed, and nothing written."""
    first_order, second_order = (
        int((await submitted_order(client, cast))["id"]),
        int((await submitted_order(client, cast))["id"]),
    )
    first = await decide(client, cast, "review", first_order, "by-statement")
    with monkeypatch.context() as declining:
        keyed_writes_in_a_transaction(declining)
        second = await decide(client, cast, "review", second_order, "by-transaction")
        replayed_by_transaction = await decide(client, cast, "review", first_order, "by-statement")
    replayed_by_statement = await decide(client, cast, "review", second_order, "by-transaction")
    for original, replay in ((first, replayed_by_transaction), (second, replayed_by_statement)):
        assert (original.status_code, replay.status_code) == (200, 200), replay.text
        assert replay.content == original.content
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.headers["etag"] == original.headers["etag"]
    for order in (first_order, second_order):
        events = (await history(owner_engine, order))["events"]
        assert [e["type"] for e in events] == ["CREATED", "REVIEWED"], "reviewed once"
    reused = await decide(client, cast, "review", second_order, "by-statement", note="other")
    assert reused.status_code == 422, reused.text
    assert reused.json()["type"].endswith("/idempotency-key-reused")


async def test_a_keyed_decision_refused_leaves_neither_key_nor_caller_behind(
    one_connection_app: tuple[FastAPI, httpx.AsyncClient], cast: Cast, owner_engine: AsyncEngine
) -> None:
    """A decision tradeops_decide_order does not make undoes the statement, the key's
    reservation with it (SQLSTATE TO001); the transaction explains the refusal, the pooled
    connection keeps nothing of the caller, and the same key then serves the corrected
    request."""
    app, http = one_connection_app
    order_id = int((await submitted_order(http, cast))["id"])
    keyed = cast["trader2"] | {"Idempotency-Key": "stale-1"}
    stale = await http.post(
        f"{ORDERS}/{order_id}/review", json={"expected_version": 7}, headers=keyed
    )
    assert stale.status_code == 409, stale.text
    assert stale.json()["type"].endswith("/stale-version")
    assert await stored_under(owner_engine, "stale-1") is None
    await caller_left_on_the_one_connection(app)
    corrected = await http.post(
        f"{ORDERS}/{order_id}/review", json={"expected_version": 1}, headers=keyed
    )
    assert corrected.status_code == 200, corrected.text
    assert "idempotent-replayed" not in corrected.headers
    await caller_left_on_the_one_connection(app)


async def test_the_same_keyed_review_sent_at_once_is_made_once(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = int((await submitted_order(client, cast))["id"])
    answers = await asyncio.gather(
        *(decide(client, cast, "review", order_id, "at-once") for _ in range(3))
    )
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert len({a.content for a in answers}) == 1
    assert sum("idempotent-replayed" not in a.headers for a in answers) == 1
    events = (await history(owner_engine, order_id))["events"]
    assert [e["type"] for e in events] == ["CREATED", "REVIEWED"]
