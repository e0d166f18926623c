"""Pre-trade risk: limits managed by risk, every new order checked by the worker, results
recorded on the order (event + audit), failures visible, approval only after PASSED."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import SEED_ORDER, Cast, approved_order
from tradeops.jobs import tasks
from tradeops.jobs.app import run_worker

API = "/api/v1"
ORDERS = f"{API}/orders"
LIMITS = f"{API}/risk/limits"


async def publish_price(client: httpx.AsyncClient, cast: Cast, symbol: str, price: str) -> None:
    snapshot = {"symbol": symbol, "price": price, "as_of": "2026-11-23T14:30:00Z", "source": "t"}
    response = await client.post(
        f"{API}/market-data/snapshots", json={"snapshots": [snapshot]}, headers=cast["admin"]
    )
    assert response.status_code == 201, response.text


async def submit_and_check(
    client: httpx.AsyncClient, cast: Cast, database_url: str, **changes: Any
) -> dict[str, Any]:
    """Submit as the trader, let the worker run the check, return the order as it is now."""
    created = await client.post(ORDERS, json={**SEED_ORDER, **changes}, headers=cast["trader"])
    assert created.status_code == 201, created.text
    await run_worker(database_url, wait=False, install_signal_handlers=False)
    order = await client.get(f"{ORDERS}/{created.json()['id']}", headers=cast["trader"])
    return dict(order.json())


async def set_limit(client: httpx.AsyncClient, cast: Cast, **limit: Any) -> httpx.Response:
    return await client.put(LIMITS, json=limit, headers=cast["risk"])


async def events(client: httpx.AsyncClient, cast: Cast, order_id: int) -> list[dict[str, Any]]:
    response = await client.get(f"{ORDERS}/{order_id}/events", headers=cast["trader"])
    return list(response.json()["items"])


def codes(order: dict[str, Any]) -> list[str]:
    return [reason["code"] for reason in order["risk_reasons"]]


async def test_an_order_within_every_limit_passes_with_an_event_and_an_audit_record(
    client: httpx.AsyncClient, cast: Cast, database_url: str, owner_engine: AsyncEngine
) -> None:
    await publish_price(client, cast, "AAPL", "190.00")
    order = await submit_and_check(client, cast, database_url)
    assert (order["risk_status"], order["risk_reasons"], order["version"]) == ("PASSED", [], 2)
    history = await events(client, cast, order["id"])
    assert [(e["seq"], e["type"], e["actor"]) for e in history] == [
        (1, "CREATED", f"user:{cast.ids['trader']}"),
        (2, "RISK_CHECKED", "system:risk-check"),
    ]
    async with owner_engine.connect() as conn:
        audited = (
            await conn.execute(
                text(
                    "SELECT request_id, before->>'risk_status' AS was,"
                    " after->>'risk_status' AS now FROM audit_events"
                    " WHERE action = 'order.risk_checked' AND entity_id = :id"
                ),
                {"id": str(order["id"])},
            )
        ).one()
    assert (audited.was, audited.now) == ("PENDING", "PASSED")
    assert audited.request_id.startswith("job-")


async def test_restricted_instrument_fails_the_check(
    client: httpx.AsyncClient, cast: Cast, database_url: str
) -> None:
    await publish_price(client, cast, "AAPL", "192.55")
    restricted = await client.patch(
        f"{API}/instruments/AAPL", json={"restricted": True}, headers=cast["risk"]
    )
    assert restricted.status_code == 200, restricted.text
    order = await submit_and_check(client, cast, database_url)
    assert (order["risk_status"], codes(order)) == ("FAILED", ["RESTRICTED_INSTRUMENT"])


async def test_the_stricter_of_desk_and_client_notional_limits_applies(
    client: httpx.AsyncClient, cast: Cast, database_url: str
) -> None:
    await publish_price(client, cast, "AAPL", "192.55")
    desk = await set_limit(client, cast, desk="EQ-US", max_order_notional="5000")
    assert desk.status_code == 200, desk.text
    client_limit = await set_limit(client, cast, client_id="CUST-1001", max_order_notional="9000")
    assert client_limit.status_code == 200, client_limit.text
    order = await submit_and_check(client, cast, database_url)  # 50 x 192.55 = 9627.50
    assert order["risk_status"] == "FAILED"
    [reason] = order["risk_reasons"]
    assert (reason["code"], reason["scope"], reason["limit"], reason["value"]) == (
        "NOTIONAL_ABOVE_LIMIT",
        "desk",
        "5000",
        "9627.5",
    )


async def test_a_price_far_from_the_market_fails_and_a_client_band_can_tighten_it(
    client: httpx.AsyncClient, cast: Cast, database_url: str
) -> None:
    await publish_price(client, cast, "AAPL", "175.00")  # 192.55 is 10.03 % above
    far = await submit_and_check(client, cast, database_url)
    assert codes(far) == ["PRICE_AWAY_FROM_MARKET"]
    assert far["risk_reasons"][0]["limit"] == "10"  # the default band

    await set_limit(client, cast, client_id="CUST-1001", fat_finger_pct="2")
    near = await submit_and_check(client, cast, database_url, price="179.00")  # 2.29 % above
    assert codes(near) == ["PRICE_AWAY_FROM_MARKET"]
    within = await submit_and_check(client, cast, database_url, price="178.50")  # 2.0 %
    assert within["risk_status"] == "PASSED"


async def test_the_resulting_position_is_checked_against_the_limit(
    client: httpx.AsyncClient, cast: Cast, database_url: str, owner_engine: AsyncEngine
) -> None:
    await publish_price(client, cast, "AAPL", "192.55")
    held = await approved_order(client, cast, owner_engine)  # BUY 50, filled: long 50
    fill = {
        "quantity": "50",
        "price": "192.55",
        "venue": "XNAS",
        "executed_at": "2026-11-23T14:31:00Z",
        "external_id": "XNAS-RISK-1",
    }
    filled = await client.post(f"{ORDERS}/{held}/executions", json=fill, headers=cast["admin"])
    assert filled.status_code == 201, filled.text
    await set_limit(client, cast, client_id="CUST-1001", max_position="80")

    more = await submit_and_check(client, cast, database_url, quantity=40)  # long 90
    assert codes(more) == ["POSITION_ABOVE_LIMIT"]
    assert (more["risk_reasons"][0]["value"], more["risk_reasons"][0]["limit"]) == ("90", "80")
    within = await submit_and_check(client, cast, database_url, quantity=30)  # long 80
    assert within["risk_status"] == "PASSED"
    reducing = await submit_and_check(client, cast, database_url, side="SELL", quantity=20)
    assert reducing["risk_status"] == "PASSED"
    # An approved order not yet filled counts: long 50 + approved 25 + 10 = 85 > 80.
    await approved_order(client, cast, owner_engine, quantity=25)
    beyond = await submit_and_check(client, cast, database_url, quantity=10)
    assert codes(beyond) == ["POSITION_ABOVE_LIMIT"]
    assert beyond["risk_reasons"][0]["value"] == "85"


async def test_without_a_market_price_the_check_fails_closed(
    client: httpx.AsyncClient, cast: Cast, database_url: str
) -> None:
    order = await submit_and_check(client, cast, database_url)
    assert (order["risk_status"], codes(order)) == ("FAILED", ["NO_MARKET_PRICE"])


async def test_rerunning_a_check_changes_nothing(
    client: httpx.AsyncClient, cast: Cast, database_url: str, owner_engine: AsyncEngine
) -> None:
    await publish_price(client, cast, "AAPL", "192.55")
    order = await submit_and_check(client, cast, database_url)
    async with owner_engine.begin() as conn:  # the same job, delivered a second time
        await conn.execute(
            text(
                "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('risk', 'check_order_risk', 0,"
                " NULL, NULL, jsonb_build_object('order_id', CAST(:id AS bigint)),"
                " NULL)::procrastinate_job_to_defer_v1])"
            ),
            {"id": order["id"]},
        )
    await run_worker(database_url, wait=False, install_signal_handlers=False)
    again = (await client.get(f"{ORDERS}/{order['id']}", headers=cast["trader"])).json()
    assert again["version"] == order["version"] == 2
    assert [e["type"] for e in await events(client, cast, order["id"])] == [
        "CREATED",
        "RISK_CHECKED",
    ]


async def test_a_check_that_cannot_run_fails_the_order_visibly(
    client: httpx.AsyncClient,
    cast: Cast,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def broken_rules(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("rules engine crashed: internal detail")

    monkeypatch.setattr(tasks.risk, "check_order", broken_rules)
    order = await submit_and_check(client, cast, database_url)

    assert (order["risk_status"], codes(order)) == ("FAILED", ["RISK_CHECK_ERROR"])
    assert "internal detail" not in str(order["risk_reasons"])  # the type only, no message
    history = await events(client, cast, order["id"])
    assert [e["type"] for e in history] == ["CREATED", "RISK_CHECK_ERROR"]
    logged = capsys.readouterr().out
    assert "job_failed" in logged and "RuntimeError" in logged


async def test_approval_waits_for_a_passed_check(
    client: httpx.AsyncClient, cast: Cast, database_url: str
) -> None:
    await publish_price(client, cast, "AAPL", "192.55")
    created = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    order_id = created.json()["id"]
    await client.post(f"{ORDERS}/{order_id}/review", headers=cast["trader2"])
    early = await client.post(f"{ORDERS}/{order_id}/approve", headers=cast["approver"])
    assert early.status_code == 409
    assert early.json()["type"].endswith("/risk-check-pending")

    await run_worker(database_url, wait=False, install_signal_handlers=False)
    approved = await client.post(f"{ORDERS}/{order_id}/approve", headers=cast["approver"])
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "APPROVED"


async def test_a_failed_check_blocks_approval_and_names_the_reasons(
    client: httpx.AsyncClient, cast: Cast, database_url: str
) -> None:
    order = await submit_and_check(client, cast, database_url)  # no price: FAILED
    await client.post(f"{ORDERS}/{order['id']}/review", headers=cast["trader2"])
    refused = await client.post(f"{ORDERS}/{order['id']}/approve", headers=cast["approver"])
    assert refused.status_code == 409
    assert refused.json()["type"].endswith("/risk-check-failed")
    assert [r["code"] for r in refused.json()["risk_reasons"]] == ["NO_MARKET_PRICE"]


# --- limits ------------------------------------------------------------------------------


async def test_risk_sets_and_replaces_limits_and_every_change_is_audited(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    first = await set_limit(client, cast, desk="EQ-US", max_order_notional="1000000.50")
    assert first.status_code == 200, first.text
    assert first.json()["max_order_notional"] == "1000000.5"
    replaced = await set_limit(client, cast, desk="EQ-US", max_position="5000")
    assert replaced.json()["max_order_notional"] is None  # replaced as a whole
    await set_limit(client, cast, client_id="CUST-1001", fat_finger_pct="2.5")

    listed = (await client.get(LIMITS, headers=cast["admin"])).json()
    assert [(i["desk"], i["client_id"]) for i in listed["items"]] == [
        ("EQ-US", None),
        ("EQ-US", "CUST-1001"),
    ]
    assert listed["default_fat_finger_pct"] == "10"
    only_client = await client.get(LIMITS, params={"client_id": "CUST-1001"}, headers=cast["risk"])
    assert [i["fat_finger_pct"] for i in only_client.json()["items"]] == ["2.5"]

    async with owner_engine.connect() as conn:
        changes = (
            await conn.execute(
                text(
                    "SELECT before->>'max_order_notional' AS was,"
                    " after->>'max_order_notional' AS now, actor FROM audit_events"
                    " WHERE action = 'risk_limit.set' ORDER BY id"
                )
            )
        ).all()
    # Decimals as the API writes them (issue 18 item 6), not "1000000.500000".
    assert [(c.was, c.now) for c in changes] == [
        (None, "1000000.5"),
        ("1000000.5", None),
        (None, None),
    ]
    assert {c.actor for c in changes} == {f"user:{cast.ids['risk']}"}


@pytest.mark.parametrize(
    "body",
    [
        {"max_order_notional": "1"},  # neither desk nor client
        {"desk": "EQ-US", "client_id": "CUST-1001"},  # both
        {"desk": "NOPE"},
        {"client_id": "CUST-9999"},
        {"desk": "EQ-US", "max_order_notional": "-1"},
        {"desk": "EQ-US", "max_position": "0"},
        {"desk": "EQ-US", "fat_finger_pct": "101"},
        {"desk": "EQ-US", "fat_finger_pct": "NaN"},
        {"desk": "EQ-US", "max_order_notional": 1e300},
        {"desk": "EQ-US", "surprise": 1},
    ],
)
async def test_invalid_limits_are_422_and_change_nothing(
    client: httpx.AsyncClient, cast: Cast, body: dict[str, Any]
) -> None:
    response = await client.put(LIMITS, json=body, headers=cast["risk"])
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert (await client.get(LIMITS, headers=cast["risk"])).json()["items"] == []


async def test_only_risk_changes_limits_and_keys_never_see_them(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    limit = {"desk": "EQ-US", "max_order_notional": "1"}
    for who in ("trader", "approver", "admin", "agent"):
        refused = await client.put(LIMITS, json=limit, headers=cast[who])
        assert refused.status_code == 403, who
    for who in ("trader", "trader_fi", "approver", "agent"):
        assert (await client.get(LIMITS, headers=cast[who])).status_code == 403, who
    assert (await client.get(LIMITS, headers=cast["risk"])).json()["items"] == []
