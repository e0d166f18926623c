"""Issue 15, "a write needs at most two" round trips: review, approve, reject and cancel in
one statement (migration 0035), with every property of the transaction they replaced.

- The installed function records an approval and makes the change exactly as
  orders.repository writes them.
- A decision in one statement records what one in a transaction records (an
  Idempotency-Key, its one statement declined, takes that path), and answers the order as
  GET /orders/{id} shows it.
- A decision it does not record (a caller who may not, another desk, a status or risk check
  a rule refuses, the maker deciding, someone else's order cancelled, another version, an
  approval already given or one of several) is answered by the transaction as before, and
  the statement wrote nothing.
- The database itself refuses a decision it may not make.
- Of three reviews of one order at once, exactly one is recorded.
- Nothing of the caller stays on the pooled connection; the server bounds the wait for the
  order's lock.
- An order's history, read in one statement (migration 0037), is the transaction's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from pytest import MonkeyPatch
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import (
    ALL_SCOPES,
    SEED_ORDER,
    Cast,
    bearer,
    caller_left_on_the_one_connection,
    installed_source,
    keyed_writes_in_a_transaction,
    make_maker,
    make_user,
    orders_locked,
    reviewed_order,
    stored_api_key,
)
from tradeops.auth.keys import hash_key, parse_key
from tradeops.auth.permissions import Action, who_may_all
from tradeops.auth.principal import Principal, Role
from tradeops.db.uow import APP_ROLE, run_in_transaction
from tradeops.orders import repository as orders_repo
from tradeops.orders import workflow

ORDERS = "/api/v1/orders"
SAID = {"note": "client confirmed by phone", "recommendation": "APPROVE"}


async def submitted(client: httpx.AsyncClient, cast: Cast) -> int:
    created = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


async def history(engine: AsyncEngine, order_id: int) -> dict[str, list[dict[str, Any]]]:
    """The order's events and audit entries, as a review writes them."""
    async with engine.connect() as conn:
        events = await conn.execute(
            text(
                "SELECT seq, type, payload, actor FROM order_events WHERE order_id = :id"
                " ORDER BY seq"
            ),
            {"id": order_id},
        )
        audit = await conn.execute(
            text(
                "SELECT action, before ->> 'status' AS before, after ->> 'status' AS after,"
                " after ->> 'reviewed_by' IS NOT NULL AS names_reviewer, actor"
                " FROM audit_events WHERE entity = 'order' AND entity_id = :key ORDER BY seq"
            ),
            {"key": str(order_id)},
        )
        return {
            "events": [dict(row) for row in events.mappings()],
            "audit": [dict(row) for row in audit.mappings()],
        }


async def test_the_installed_function_decides_as_the_code_writes_it(
    owner_engine: AsyncEngine,
) -> None:
    """The migration holds a copy of the approval's statement and of TRANSITION's change: a
    change to either without a migration that installs the function again fails here."""
    source = await installed_source(owner_engine, "tradeops_decide_order")

    def after(words: str) -> str:
        return source.split(words, 1)[1].lstrip().split(";\n", 1)[0]

    installed = (after("every approval committed before."), after("the order as locked."))
    assert installed == orders_repo.decide_order_function()


async def test_a_review_in_one_statement_is_recorded_as_in_a_transaction(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, monkeypatch: MonkeyPatch
) -> None:
    """The same review of two orders, once in one statement and once in a transaction: the
    same answer (but for the order's id and times), the same history; and the answer is the
    order as GET shows it next."""
    first, second = await submitted(client, cast), await submitted(client, cast)
    alone = await client.post(f"{ORDERS}/{first}/review", json=SAID, headers=cast["agent"])
    keyed_writes_in_a_transaction(monkeypatch)
    keyed = cast["agent"] | {"Idempotency-Key": "review-1"}
    in_transaction = await client.post(f"{ORDERS}/{second}/review", json=SAID, headers=keyed)
    assert alone.status_code == in_transaction.status_code == 200, alone.text
    assert alone.headers["etag"] == in_transaction.headers["etag"] == '"2"'
    shown = await client.get(f"{ORDERS}/{first}", headers=cast["agent"])
    assert alone.content == shown.content
    one, other = alone.json(), in_transaction.json()
    for answer in (one, other):
        for varies in ("id", "created_at", "updated_at"):
            answer.pop(varies)
    assert one == other
    assert one["status"] == "REVIEWED" and one["reviewed_by"] == "agent@test.bank"
    recorded, as_before = await history(owner_engine, first), await history(owner_engine, second)
    # What the review wrote (the submission's event names its own request).
    assert recorded["events"][1:] == as_before["events"][1:]
    assert recorded["audit"] == as_before["audit"]
    assert [e["type"] for e in recorded["events"]] == ["CREATED", "REVIEWED"]
    assert recorded["events"][1]["payload"] == SAID
    assert recorded["audit"][1]["action"] == "order.reviewed"
    assert (recorded["audit"][1]["before"], recorded["audit"][1]["after"]) == (
        "PENDING",
        "REVIEWED",
    )


async def refused_as_before(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    path: str,
    headers: dict[str, str],
    problem: tuple[int, str],
    body: dict[str, Any] | None = None,
) -> None:
    """The decision posted to `path` refused with the status and problem the transaction
    answers (`problem`), nothing written: no event, no audit entry, no approval."""
    order_id = int(path.split("/")[4])
    before = await history(engine, order_id), await approvals(engine, order_id)
    answer = await client.post(path, json=body, headers=headers)
    assert answer.status_code == problem[0], answer.text
    assert answer.json()["type"].endswith(f"/{problem[1]}")
    assert (await history(engine, order_id), await approvals(engine, order_id)) == before


async def approvals(engine: AsyncEngine, order_id: int) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT approved_by, note FROM order_approvals WHERE order_id = :id"),
            {"id": order_id},
        )
        return [dict(row) for row in found.mappings()]


async def key_headers(engine: AsyncEngine, scopes: list[str]) -> dict[str, str]:
    return bearer(await stored_api_key(engine, "agent@test.bank", scopes))


@pytest.mark.parametrize(
    ("who", "status", "problem"),
    [
        ("risk", 403, "forbidden"),
        ("key without orders:review", 403, "forbidden"),
        ("key without orders:read", 403, "forbidden"),
        ("trader_fi", 404, "order-not-found"),
        ("stale If-Match", 409, "stale-version"),
        ("already reviewed", 409, "illegal-transition"),
    ],
)
async def test_a_review_not_recorded_is_answered_by_the_transaction(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    who: str,
    status: int,
    problem: str,
) -> None:
    order_id = await submitted(client, cast)
    headers = cast["trader2"]
    if who == "key without orders:review":
        headers = await key_headers(owner_engine, ["orders:read"])
    elif who == "key without orders:read":
        headers = await key_headers(owner_engine, ["orders:review"])
    elif who == "stale If-Match":
        headers = headers | {"If-Match": '"7"'}
    elif who == "already reviewed":
        first = await client.post(f"{ORDERS}/{order_id}/review", headers=headers)
        assert first.status_code == 200, first.text
    elif who in ("risk", "trader_fi"):
        headers = cast[who]
    path = f"{ORDERS}/{order_id}/review"
    await refused_as_before(client, owner_engine, path, headers, (status, problem))


@pytest.mark.parametrize("version", [2**31, 2**63])
async def test_a_version_past_postgresqls_integer_is_stale_as_before(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, version: int
) -> None:
    """No order has it (a version is a PostgreSQL integer): 409 stale-version, as the
    transaction always answered, not a 422 for a parameter out of range."""
    path = f"{ORDERS}/{await submitted(client, cast)}/review"
    stale = (409, "stale-version")
    await refused_as_before(
        client, owner_engine, path, cast["agent"], stale, {"expected_version": version}
    )


async def decide_as_key(
    raw: asyncpg.Connection,
    key: str,
    order_id: int,
    transition: workflow.Transition = workflow.REVIEW,
    version: int | None = None,
) -> asyncpg.Record | None:
    """`transition` of `order_id` in one statement with `key`, straight to the function,
    with who may as the application passes it."""
    rule = who_may_all(transition.action, Action.READ_ORDERS)
    others = workflow.DECIDE_ON_OTHERS_ORDERS.get(transition)
    others_by = None if others is None else [role.value for role in others]
    to_status = transition.to_status
    return await raw.fetchrow(
        "SELECT (caller).user_id, new_version, document FROM tradeops_decide_order("
        "$1, $2, NULL, NULL, $3, 'req', $4, $5, 5000, $6, $7, $8, $9, $10, $11, NULL, $12,"
        " $12, '{}', 'order.' || lower($12))",
        parse_key(key),
        hash_key(key),
        APP_ROLE,
        rule["roles"],
        rule["scopes"],
        order_id,
        version,
        sorted(transition.from_statuses),
        transition in workflow.CHECKERS_DECISIONS,
        others_by,
        transition is workflow.APPROVE,
        to_status,
    )


async def test_the_database_refuses_a_decision_it_may_not_make(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """The function itself: a key without the scope, a version not the order's, an order
    not there, someone else's order cancelled, and any key rejecting get their caller back
    and nothing is written; the right key, the review."""
    order_id = await submitted(client, cast)
    narrow = await stored_api_key(owner_engine, "agent@test.bank", ["orders:read"])
    wide = await stored_api_key(
        owner_engine, "agent@test.bank", ["orders:read", "orders:review", "orders:write"]
    )
    approvers_key = await stored_api_key(owner_engine, "approver@test.bank", ["orders:read"])
    before = await history(owner_engine, order_id)
    async with owner_engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        for refused in (
            await decide_as_key(raw, narrow, order_id),
            await decide_as_key(raw, wide, order_id, version=2),
            await decide_as_key(raw, wide, order_id + 1000),
            await decide_as_key(raw, wide, order_id, workflow.CANCEL),  # the trader's order
            await decide_as_key(raw, approvers_key, order_id, workflow.REJECT),
        ):
            assert refused is not None
            assert refused["new_version"] is None and refused["document"] is None
        assert refused["user_id"] == cast.ids["approver"]
        assert await history(owner_engine, order_id) == before
        allowed = await decide_as_key(raw, wide, order_id, version=1)
        assert allowed is not None
        assert allowed["new_version"] == 2
        assert '"status":"REVIEWED"' in allowed["document"]


@pytest.mark.parametrize(
    ("decision", "said", "status"),
    [
        ("approve", {"note": "within limits"}, "APPROVED"),
        ("reject", {"reason": "too big"}, "REJECTED"),
        ("cancel", {"reason": "client withdrew"}, "CANCELLED"),
    ],
)
async def test_a_checkers_decision_in_one_statement_is_recorded_as_in_a_transaction(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    decision: str,
    said: dict[str, str],
    status: str,
    monkeypatch: MonkeyPatch,
) -> None:
    first, second = (
        await reviewed_order(client, cast, owner_engine),
        await reviewed_order(client, cast, owner_engine),
    )
    alone = await client.post(f"{ORDERS}/{first}/{decision}", json=said, headers=cast["approver"])
    keyed_writes_in_a_transaction(monkeypatch)
    keyed = cast["approver"] | {"Idempotency-Key": f"{decision}-1"}
    in_transaction = await client.post(f"{ORDERS}/{second}/{decision}", json=said, headers=keyed)
    assert alone.status_code == in_transaction.status_code == 200, alone.text
    assert alone.headers["etag"] == in_transaction.headers["etag"] == '"3"'
    shown = await client.get(f"{ORDERS}/{first}", headers=cast["approver"])
    assert alone.content == shown.content
    one, other = alone.json(), in_transaction.json()
    for answer in (one, other):
        for varies in ("id", "created_at", "updated_at"):
            answer.pop(varies)
        for approval in answer["approvals"]:
            approval.pop("approved_at")
    assert one == other
    assert one["status"] == status
    recorded, as_before = await history(owner_engine, first), await history(owner_engine, second)
    assert recorded["events"][1:] == as_before["events"][1:]
    assert recorded["events"][-1]["payload"] == said
    assert recorded["audit"] == as_before["audit"]
    assert recorded["audit"][-1]["action"] == f"order.{status.lower()}"
    assert await approvals(owner_engine, first) == await approvals(owner_engine, second)


@pytest.mark.parametrize(
    ("case", "status", "problem"),
    [
        ("the maker", 403, "maker-checker"),
        ("risk check pending", 409, "risk-check-pending"),
        ("a trader", 403, "forbidden"),
        ("an approver's key", 403, "forbidden"),
        ("not reviewed", 409, "illegal-transition"),
    ],
)
async def test_an_approval_not_recorded_is_answered_by_the_transaction(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    case: str,
    status: int,
    problem: str,
) -> None:
    order_id = await reviewed_order(client, cast, owner_engine)
    headers = cast["approver"]
    if case == "the maker":
        await make_maker(owner_engine, order_id, cast.ids["approver"])
    elif case == "risk check pending":
        async with owner_engine.begin() as conn:
            await conn.execute(
                text("UPDATE orders SET risk_status = 'PENDING' WHERE id = :id"), {"id": order_id}
            )
    elif case == "a trader":
        headers = cast["trader2"]
    elif case == "an approver's key":
        headers = bearer(await stored_api_key(owner_engine, "approver@test.bank", ALL_SCOPES))
    elif case == "not reviewed":
        order_id = await submitted(client, cast)
    path = f"{ORDERS}/{order_id}/approve"
    await refused_as_before(client, owner_engine, path, headers, (status, problem))


@pytest.mark.parametrize(
    ("who", "status"), [("trader", 200), ("approver", 200), ("trader2", 403), ("agent", 403)]
)
async def test_a_cancellation_is_the_makers_or_an_approvers(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, who: str, status: int
) -> None:
    """The trader's order: they or an approver of its desk cancel it in one statement;
    another trader, or an agent's key, is refused by the transaction, nothing written."""
    order_id = await submitted(client, cast)
    path = f"{ORDERS}/{order_id}/cancel"
    if status != 200:
        await refused_as_before(client, owner_engine, path, cast[who], (status, "forbidden"))
        return
    answer = await client.post(path, headers=cast[who])
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "CANCELLED"
    assert (await history(owner_engine, order_id))["events"][-1]["type"] == "CANCELLED"


async def test_an_order_needing_two_approvals_is_approved_by_the_transaction(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """The one statement leaves an order that needs several approvals to the transaction,
    which counts them: the first is recorded (REVIEWED, a new version), the second
    approves it."""
    two = {"currency": "USD", "bands": [{"min_notional": "0", "approvals": 2}]}
    policy = await client.put("/api/v1/desks/EQ-US/approval-policy", json=two, headers=cast["risk"])
    assert policy.status_code == 200, policy.text
    order_id = await reviewed_order(client, cast, owner_engine)
    second_approver = await make_user(owner_engine, "approver2@test.bank", "approver", ["EQ-US"])
    first = await client.post(f"{ORDERS}/{order_id}/approve", headers=cast["approver"])
    assert first.status_code == 200, first.text
    assert (first.json()["status"], first.json()["version"]) == ("REVIEWED", 3)
    token = app.state.tokens.issue(second_approver, "approver")[0]
    last = await client.post(f"{ORDERS}/{order_id}/approve", headers=bearer(token))
    assert last.status_code == 200, last.text
    assert last.json()["status"] == "APPROVED"
    events = (await history(owner_engine, order_id))["events"]
    assert [e["type"] for e in events][-2:] == ["APPROVAL_RECORDED", "APPROVED"]
    assert events[-1]["payload"] == {"approvals": 2, "approvals_required": 2}


async def test_of_three_reviews_at_once_exactly_one_is_recorded(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await submitted(client, cast)
    answers = await asyncio.gather(
        *(
            client.post(f"{ORDERS}/{order_id}/review", headers=cast[who])
            for who in ("trader2", "agent", "approver")
        )
    )
    assert sorted(a.status_code for a in answers) == [200, 409, 409], [a.text for a in answers]
    events = (await history(owner_engine, order_id))["events"]
    assert [e["type"] for e in events] == ["CREATED", "REVIEWED"]


async def test_nothing_of_the_reviewer_stays_on_the_pooled_connection(
    one_connection_app: tuple[FastAPI, httpx.AsyncClient], cast: Cast
) -> None:
    app, http = one_connection_app
    created = await http.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    assert created.status_code == 201, created.text
    reviewed = await http.post(f"{ORDERS}/{created.json()['id']}/review", headers=cast["agent"])
    assert reviewed.status_code == 200, reviewed.text
    await caller_left_on_the_one_connection(app)


async def test_a_review_behind_a_lock_is_answered_504_with_nothing_written(
    one_connection_app: tuple[FastAPI, httpx.AsyncClient],
    cast: Cast,
    owner_engine: AsyncEngine,
) -> None:
    """With no BEGIN to carry a statement timeout, the function sets its own lock_timeout:
    behind the order's lock the server ends the statement, with nothing written."""
    _, http = one_connection_app
    created = await http.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    order_id = created.json()["id"]
    before = await history(owner_engine, order_id)
    async with orders_locked(owner_engine) as waiting:
        answer = await http.post(f"{ORDERS}/{order_id}/review", headers=cast["agent"])
        still_waiting = await waiting("tradeops_review_order")
    assert answer.status_code == 504, answer.text
    assert answer.json()["type"].endswith("/database-timeout")
    assert still_waiting == 0
    assert await history(owner_engine, order_id) == before
    again = await http.post(f"{ORDERS}/{order_id}/review", headers=cast["agent"])
    assert again.status_code == 200, again.text


async def test_an_orders_history_read_in_one_statement_is_the_transactions(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """GET /orders/{id}/events in one statement (migration 0037) answers the bytes the
    transaction's read writes, notes, recommendation and times included; another desk's
    order and one that does not exist are 404, a key without orders:read 403."""
    order_id = await reviewed_order(client, cast, owner_engine)
    said = {"note": "within limits, as \u201cagreed\u201d"}
    approved = await client.post(
        f"{ORDERS}/{order_id}/approve", json=said, headers=cast["approver"]
    )
    assert approved.status_code == 200, approved.text
    alone = await client.get(f"{ORDERS}/{order_id}/events", headers=cast["admin"])
    assert alone.status_code == 200, alone.text
    admin = Principal(
        user_id=cast.ids["admin"], email="admin@test.bank", role=Role.ADMIN, all_desks=True
    )
    events = await run_in_transaction(
        app.state.db, admin, lambda uow: workflow.order_history(uow, admin, order_id)
    )
    assert alone.content == workflow.OrderEventList(items=events).model_dump_json().encode()
    assert [e["type"] for e in alone.json()["items"]] == ["CREATED", "REVIEWED", "APPROVED"]
    for headers, status in (
        (cast["trader_fi"], 404),
        (await key_headers(owner_engine, ["orders:review"]), 403),
    ):
        answer = await client.get(f"{ORDERS}/{order_id}/events", headers=headers)
        assert answer.status_code == status, answer.text
    missing = await client.get(f"{ORDERS}/{order_id + 1000}/events", headers=cast["admin"])
    assert missing.status_code == 404, missing.text
