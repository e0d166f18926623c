"""Issue 16, items 1-3: amend (replace) an open order, cancel many, find by client_order_id."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import (
    SEED_ORDER,
    Cast,
    approved_order,
    database_refusing_cancel,
    pass_risk_check,
)
from tradeops.jobs.app import run_worker

ORDERS = "/api/v1/orders"
FI_ORDER = {**SEED_ORDER, "client_id": "CUST-2001"}
FILL = {
    "quantity": "10",
    "price": "192.5",
    "venue": "XNAS",
    "executed_at": "2026-11-23T14:30:00Z",
    "external_id": "XNAS-1",
}


async def submit(
    client: httpx.AsyncClient, headers: dict[str, str], **changes: Any
) -> dict[str, Any]:
    response = await client.post(ORDERS, json={**SEED_ORDER, **changes}, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def amend(
    client: httpx.AsyncClient,
    order_id: int,
    headers: dict[str, str],
    body: dict[str, Any],
    **extra: str,
) -> httpx.Response:
    return await client.patch(f"{ORDERS}/{order_id}", json=body, headers={**headers, **extra})


async def read(client: httpx.AsyncClient, order_id: int, headers: dict[str, str]) -> Any:
    response = await client.get(f"{ORDERS}/{order_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def events(client: httpx.AsyncClient, order_id: int, headers: dict[str, str]) -> Any:
    response = await client.get(f"{ORDERS}/{order_id}/events", headers=headers)
    return response.json()["items"]


# --- 1. replace ------------------------------------------------------------------------------


async def test_replacing_a_reviewed_order_starts_a_new_decision(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    old = await submit(client, cast["trader"], client_order_id="t-1")
    await pass_risk_check(owner_engine, old["id"])
    reviewed = await client.post(f"{ORDERS}/{old['id']}/review", headers=cast["trader2"])
    assert reviewed.status_code == 200
    response = await amend(
        client,
        old["id"],
        cast["trader"],
        {"quantity": "80", "price": "191.50", "client_order_id": "t-1a"},
        **{"If-Match": reviewed.headers["etag"]},
    )
    assert response.status_code == 201, response.text
    new = response.json()
    assert response.headers["location"] == f"{ORDERS}/{new['id']}"
    assert response.headers["etag"] == f'"{new["version"]}"'
    assert (new["status"], new["risk_status"], new["replaces"]) == ("PENDING", "PENDING", old["id"])
    assert (new["quantity"], new["price"], new["client_order_id"]) == ("80", "191.5", "t-1a")
    assert (new["client_id"], new["symbol"], new["side"]) == ("CUST-1001", "AAPL", "BUY")
    assert new["reviewed_by"] is None and new["created_by"] == "trader@test.bank"
    # The answer is the order as GET shows it.
    assert await read(client, new["id"], cast["trader"]) == new
    replaced = await read(client, old["id"], cast["approver"])
    assert (replaced["status"], replaced["replaced_by"]) == ("REPLACED", new["id"])
    old_events = await events(client, old["id"], cast["trader"])
    assert old_events[-1]["type"] == "REPLACED"
    assert old_events[-1]["payload"]["replaced_by"] == new["id"]
    new_events = await events(client, new["id"], cast["trader"])
    assert [e["type"] for e in new_events] == ["CREATED"]
    assert new_events[0]["payload"]["replaces"] == old["id"]
    async with owner_engine.connect() as conn:
        audit = (
            await conn.execute(
                text(
                    "SELECT action, entity_id FROM audit_events WHERE entity = 'order'"
                    " AND entity_id IN (:old, :new) ORDER BY id"
                ),
                {"old": str(old["id"]), "new": str(new["id"])},
            )
        ).all()
        risk_jobs = await conn.scalar(
            text(
                "SELECT count(*) FROM procrastinate_jobs WHERE task_name LIKE '%risk%'"
                " AND (args->>'order_id')::bigint = :id"
            ),
            {"id": new["id"]},
        )
    assert ("order.replaced", str(old["id"])) in audit
    assert ("order.created", str(new["id"])) in audit
    assert risk_jobs == 1
    # The replaced order is final: no decision, cancel or second amendment.
    for step in ("approve", "cancel"):
        refused = await client.post(f"{ORDERS}/{old['id']}/{step}", headers=cast["approver"])
        assert refused.status_code == 409, refused.text
    again = await amend(client, old["id"], cast["trader"], {"quantity": "10"})
    assert again.status_code == 409 and again.json()["current_status"] == "REPLACED"
    verified = await client.post("/api/v1/audit/verify", headers=cast["risk"])
    assert verified.json()["ok"] is True


async def test_of_concurrent_amendments_one_wins_and_the_new_order_gets_its_risk_check(
    client: httpx.AsyncClient, cast: Cast, database_url: str
) -> None:
    order = await submit(client, cast["trader"])
    answers = await asyncio.gather(
        *(
            amend(
                client,
                order["id"],
                cast["trader"],
                {"quantity": str(10 + i)},
                **{"If-Match": '"1"'},
            )
            for i in range(10)
        )
    )
    assert sorted(a.status_code for a in answers) == [201] + [409] * 9
    (new,) = [a.json() for a in answers if a.status_code == 201]
    assert (await read(client, order["id"], cast["trader"]))["replaced_by"] == new["id"]
    await run_worker(database_url, wait=False, install_signal_handlers=False)
    checked = await read(client, new["id"], cast["trader"])
    assert checked["risk_status"] in ("PASSED", "FAILED")
    assert [e["type"] for e in await events(client, new["id"], cast["trader"])] == [
        "CREATED",
        "RISK_CHECKED",
    ]


async def test_a_partly_filled_order_keeps_its_fills_and_the_rest_is_replaced(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await approved_order(client, cast, owner_engine)
    fill = await client.post(f"{ORDERS}/{order_id}/executions", json=FILL, headers=cast["admin"])
    assert fill.status_code == 201, fill.text
    response = await amend(client, order_id, cast["trader"], {"price": "193"})
    assert response.status_code == 201, response.text
    new = response.json()
    assert (new["quantity"], new["price"], new["filled_quantity"]) == ("40", "193", "0")
    old = await read(client, order_id, cast["trader"])
    assert (old["status"], old["filled_quantity"], old["replaced_by"]) == (
        "REPLACED",
        "10",
        new["id"],
    )
    assert old["approved_by"] == "approver@test.bank"  # the old decision stays on record
    # A REPLACED order takes no more fills.
    fill = await client.post(
        f"{ORDERS}/{order_id}/executions",
        json={**FILL, "external_id": "XNAS-2"},
        headers=cast["admin"],
    )
    assert fill.status_code == 409, fill.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"quantity": "0.5"}, "body.quantity"),
        ({"price": "192.555"}, "body.price"),
        ({}, None),
    ],
)
async def test_amended_terms_are_checked_like_intakes(
    client: httpx.AsyncClient, cast: Cast, body: dict[str, Any], field: str | None
) -> None:
    order = await submit(client, cast["trader"])
    response = await amend(client, order["id"], cast["trader"], body)
    assert response.status_code == 422, response.text
    if field is not None:
        assert [e["field"] for e in response.json()["errors"]] == [field]
    assert (await read(client, order["id"], cast["trader"]))["status"] == "PENDING"


async def test_a_stale_version_or_a_used_client_order_id_replaces_nothing(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    first = await submit(client, cast["trader"], client_order_id="used-1")
    order = await submit(client, cast["trader"])
    stale = await amend(
        client, order["id"], cast["trader"], {"quantity": "60"}, **{"If-Match": '"7"'}
    )
    assert stale.status_code == 409 and stale.json()["current_version"] == 1
    taken = await amend(client, order["id"], cast["trader"], {"client_order_id": "used-1"})
    assert taken.status_code == 409, taken.text
    assert taken.json()["existing_order_id"] == first["id"]
    now = await read(client, order["id"], cast["trader"])
    assert (now["status"], now["version"], now["replaced_by"]) == ("PENDING", 1, None)


async def test_the_database_keeps_replacements_to_one_maker_desk_and_open_order(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """What the service checks, the database checks again for any writer (migration 0014)."""
    order = await submit(client, cast["trader"])
    fi = await client.post(ORDERS, json=FI_ORDER, headers=cast["trader_fi"])
    other_maker = await submit(client, cast["trader2"])
    copy = (
        "INSERT INTO orders (desk_id, client_id, instrument_id, side, order_type, quantity,"
        " price, currency, created_by, replaces)"
        " SELECT desk_id, client_id, instrument_id, side, order_type, quantity, price,"
        " currency, {maker}, {replaces} FROM orders WHERE id = :id"
    )
    attempts = [
        # another maker
        (
            copy.format(maker=cast.ids["trader"], replaces=":other"),
            {"id": order["id"], "other": other_maker["id"]},
        ),
        # another desk (the composite foreign key)
        (
            copy.format(maker="created_by", replaces=":other"),
            {"id": order["id"], "other": fi.json()["id"]},
        ),
        # REPLACED without naming the replacement
        ("UPDATE orders SET status = 'REPLACED' WHERE id = :id", {"id": order["id"]}),
    ]
    for sql, params in attempts:
        with pytest.raises(DBAPIError):
            async with owner_engine.begin() as conn:
                await conn.execute(text(sql), params)
    cancelled = await client.post(f"{ORDERS}/{order['id']}/cancel", headers=cast["trader"])
    assert cancelled.status_code == 200
    with pytest.raises(DBAPIError, match="only an open order can be replaced"):
        async with owner_engine.begin() as conn:
            await conn.execute(
                text("UPDATE orders SET status = 'REPLACED', replaced_by = :o WHERE id = :id"),
                {"id": order["id"], "o": other_maker["id"]},
            )


# --- 2. cancel many ----------------------------------------------------------------------------


async def test_cancel_many_answers_per_order_and_never_touches_other_desks(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    mine = await submit(client, cast["trader"])
    colleagues = await submit(client, cast["trader2"])
    other_symbol = await submit(client, cast["trader"], symbol="MSFT", price="400")
    partly = await approved_order(client, cast, owner_engine)
    fill = await client.post(f"{ORDERS}/{partly}/executions", json=FILL, headers=cast["admin"])
    assert fill.status_code == 201
    fi = (await client.post(ORDERS, json=FI_ORDER, headers=cast["trader_fi"])).json()

    response = await client.delete(f"{ORDERS}?symbol=aapl", headers=cast["trader"])
    assert response.status_code == 207, response.text
    results = {r["id"]: r for r in response.json()["results"]}
    assert set(results) == {mine["id"], colleagues["id"], partly}  # never FI-EU, nor MSFT
    assert results[mine["id"]]["status"] == 200
    assert results[mine["id"]]["order"]["status"] == "CANCELLED"
    assert results[colleagues["id"]]["status"] == 403
    assert results[colleagues["id"]]["problem"]["status"] == 403
    assert results[partly]["status"] == 409
    assert results[partly]["problem"]["type"].endswith("illegal-transition")
    assert response.json()["more"] is False
    statuses = {
        o: (await read(client, o, cast["approver"]))["status"]
        for o in (mine["id"], colleagues["id"], other_symbol["id"], partly)
    }
    assert statuses == {
        mine["id"]: "CANCELLED",
        colleagues["id"]: "PENDING",
        other_symbol["id"]: "PENDING",
        partly: "PARTIALLY_FILLED",
    }
    assert (await read(client, fi["id"], cast["trader_fi"]))["status"] == "PENDING"
    # An approver of the desk may cancel anyone's order there; still not FI-EU's.
    by_approver = await client.delete(f"{ORDERS}?side=BUY&status=PENDING", headers=cast["approver"])
    assert {r["id"]: r["status"] for r in by_approver.json()["results"]} == {
        colleagues["id"]: 200,
        other_symbol["id"]: 200,
    }
    assert (await read(client, fi["id"], cast["trader_fi"]))["status"] == "PENDING"
    # From the other desk, only that desk's order is in the answer.
    from_fi = await client.delete(f"{ORDERS}?symbol=AAPL", headers=cast["trader_fi"])
    assert [(r["id"], r["status"]) for r in from_fi.json()["results"]] == [(fi["id"], 200)]
    history = await events(client, colleagues["id"], cast["trader"])
    assert history[-1]["type"] == "CANCELLED"
    assert history[-1]["actor"] == f"user:{cast.ids['approver']}"


# The database's own refusal of an order change (orders_maker_checker_refuse, as migrations
# 0011 and 0018 refuse one), and a trigger's bare RAISE, as an operator might add one: rules
# the service does not know, so it finds nothing to refuse and the database does.
REFUSED_BY_OUR_RULES = "PERFORM orders_maker_checker_refuse(NEW.id, 'held by compliance')"
REFUSED_BY_A_RAISE = "RAISE EXCEPTION 'order % held by compliance', NEW.id"


async def test_cancel_many_answers_a_cancel_the_database_refuses_as_that_orders_409(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """Never all-or-nothing, whoever refuses: an order whose cancel the database refuses is
    that order's 409 with the problem the single cancel answers, and the others are cancelled."""
    cancelled, held, raised = [await submit(client, cast["trader"]) for _ in range(3)]
    refusals = {held["id"]: REFUSED_BY_OUR_RULES, raised["id"]: REFUSED_BY_A_RAISE}
    async with database_refusing_cancel(owner_engine, refusals):
        single = await client.post(f"{ORDERS}/{held['id']}/cancel", headers=cast["trader"])
        response = await client.delete(f"{ORDERS}?symbol=AAPL", headers=cast["trader"])
    assert single.status_code == 409, single.text  # the single cancel, as before
    assert single.json()["type"].endswith("/maker-checker-refused")
    assert response.status_code == 207, response.text
    results = {r["id"]: r for r in response.json()["results"]}
    assert results[cancelled["id"]]["status"] == 200
    assert results[cancelled["id"]]["order"]["status"] == "CANCELLED"
    for order in (held, raised):
        refused = results[order["id"]]
        assert (refused["status"], refused["order"]) == (409, None)
        problem = refused["problem"]
        said = {k: problem[k] for k in ("type", "title", "status", "detail")}
        assert said == {k: single.json()[k] for k in said}
        assert problem["instance"] == f"{ORDERS}/{order['id']}/cancel"
        # Nothing of the database's own words: its message, the constraint, the statement.
        shown = str(problem)
        assert "compliance" not in shown and "orders_maker_checker" not in shown, shown
    statuses = {
        o["id"]: (await read(client, o["id"], cast["trader"]))["status"]
        for o in (cancelled, held, raised)
    }
    assert statuses == {
        cancelled["id"]: "CANCELLED",
        held["id"]: "PENDING",
        raised["id"]: "PENDING",
    }
    for order in (held, raised):
        assert [e["type"] for e in await events(client, order["id"], cast["trader"])] == ["CREATED"]
    assert [e["type"] for e in await events(client, cancelled["id"], cast["trader"])] == [
        "CREATED",
        "CANCELLED",
    ]


async def test_cancel_many_fails_whole_on_a_transient_database_error(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """A lost race (serialization failure) is no refusal of the order: the command is retried
    and, failing each time, answered 503 with Retry-After, nothing cancelled."""
    first, busy = [await submit(client, cast["trader"]) for _ in range(2)]
    lost_race = "RAISE EXCEPTION 'lost a race' USING ERRCODE = 'serialization_failure'"
    async with database_refusing_cancel(owner_engine, {busy["id"]: lost_race}):
        response = await client.delete(f"{ORDERS}?symbol=AAPL", headers=cast["trader"])
    assert response.status_code == 503, response.text
    assert response.json()["type"].endswith("/database-busy")
    assert "retry-after" in response.headers
    for order in (first, busy):
        assert (await read(client, order["id"], cast["trader"]))["status"] == "PENDING"


async def test_cancel_many_with_an_idempotency_key_replays_the_same_207(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    order = await submit(client, cast["trader"])
    key = {"Idempotency-Key": "bulk-cancel-0001"}
    first = await client.delete(f"{ORDERS}?client_id=CUST-1001", headers={**cast["trader"], **key})
    again = await client.delete(f"{ORDERS}?client_id=CUST-1001", headers={**cast["trader"], **key})
    assert first.status_code == again.status_code == 207
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert [r["id"] for r in first.json()["results"]] == [order["id"]]
    other_filters = await client.delete(f"{ORDERS}?symbol=MSFT", headers={**cast["trader"], **key})
    assert other_filters.status_code == 422, other_filters.text
    history = await events(client, order["id"], cast["trader"])
    assert [e["type"] for e in history] == ["CREATED", "CANCELLED"]


# --- 3. by client_order_id -----------------------------------------------------------------------


async def test_look_up_by_client_order_id_is_not_taken_for_an_order_id(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    mine = await submit(client, cast["trader"], client_order_id="abc-1")
    theirs = await submit(client, cast["trader2"], client_order_id="abc-1")
    found = await client.get(
        f"{ORDERS}:by_client_order_id?client_order_id=abc-1", headers=cast["trader"]
    )
    assert found.status_code == 200, found.text
    assert found.json()["id"] == mine["id"] and found.headers["etag"] == '"1"'
    own_only = await client.get(
        f"{ORDERS}:by_client_order_id", params={"client_order_id": "abc-1"}, headers=cast["trader2"]
    )
    assert own_only.json()["id"] == theirs["id"]
    # An approver finds the desk's order, unless several makers used the id.
    ambiguous = await client.get(
        f"{ORDERS}:by_client_order_id?client_order_id=abc-1", headers=cast["approver"]
    )
    assert ambiguous.status_code == 409
    assert sorted(ambiguous.json()["order_ids"]) == sorted([mine["id"], theirs["id"]])
    single = await submit(client, cast["trader"], client_order_id="abc-2")
    by_approver = await client.get(
        f"{ORDERS}:by_client_order_id?client_order_id=abc-2", headers=cast["approver"]
    )
    assert by_approver.json()["id"] == single["id"]
    for who in ("trader_fi", "approver_fi", "trader2"):
        hidden = await client.get(
            f"{ORDERS}:by_client_order_id?client_order_id=abc-2", headers=cast[who]
        )
        assert hidden.status_code == 404, (who, hidden.text)
    missing = await client.get(f"{ORDERS}:by_client_order_id", headers=cast["trader"])
    assert missing.status_code == 422
    listed = await client.get(f"{ORDERS}?client_order_id=abc-1", headers=cast["approver"])
    assert {o["id"] for o in listed.json()["items"]} == {mine["id"], theirs["id"]}
    # The route by id still takes ids only.
    assert (await client.get(f"{ORDERS}/abc-1", headers=cast["trader"])).status_code == 422
