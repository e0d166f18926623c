"""A new order's wake-ups are sent after its commit, not at it (migrations 0027 and 0028,
db/wakeups.py).

PostgreSQL serializes the commits of transactions that NOTIFY. Intake sets
`tradeops.wake_after_commit`, in one statement (POST /orders, with or without an
Idempotency-Key) or for its own statement in a transaction (the MCP tool, a keyed order the
one statement declines): its triggers send no NOTIFY, and the
application sends the same wake-ups once the commit is known. Every other writer, and every
later statement of intake's transaction, still notifies at its commit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import SEED_ORDER, Cast, installed_source, stored_api_key, submit_as_key
from tests.integration.test_mcp import ORDER as MCP_ORDER
from tests.integration.test_mcp import mcp_over_http, order_of
from tests.live import LiveServer
from tradeops.auth.principal import Principal, Role
from tradeops.db.uow import transaction
from tradeops.db.urls import libpq_url
from tradeops.jobs.defer import CHECK_ORDER_RISK, RISK_QUEUE, defer_job
from tradeops.orders import repository as orders_repo
from tradeops.orders.schemas import OrderCreate
from tradeops.orders.service import intake_values, submit_order
from tradeops.orders.stream import CHANNEL


class Rollback(Exception):
    pass


ORDERS = "/api/v1/orders"
# Where a new order's wake-ups go: the event streams, and procrastinate's workers (which
# listen on their queue's channel, or on every queue's).
CHANNELS = (CHANNEL, f"procrastinate_queue_v1#{RISK_QUEUE}", "procrastinate_any_queue_v1")
Heard = asyncio.Queue[tuple[str, dict[str, Any]]]


@pytest.fixture
async def heard(database_url: str) -> AsyncIterator[Heard]:
    """Every notification on a new order's channels, as (channel, payload)."""
    queue: Heard = asyncio.Queue()
    connection = await asyncpg.connect(libpq_url(database_url))
    for channel in CHANNELS:
        await connection.add_listener(
            channel, lambda _c, _pid, name, payload: queue.put_nowait((name, json.loads(payload)))
        )
    try:
        yield queue
    finally:
        await connection.close()


async def hear(queue: Heard, count: int) -> list[tuple[str, dict[str, Any]]]:
    return [await asyncio.wait_for(queue.get(), timeout=10) for _ in range(count)]


async def nothing_heard(queue: Heard, seconds: float = 0.5) -> None:
    await asyncio.sleep(seconds)
    assert queue.empty(), queue.get_nowait()


async def risk_job_of(engine: AsyncEngine, order_id: int) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT id FROM procrastinate_jobs WHERE lock = :lock"),
            {"lock": f"order:{order_id}"},
        )
    assert found is not None
    return int(found)


async def desk_of(engine: AsyncEngine, order_id: int) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT desk_id FROM orders WHERE id = :id"), {"id": order_id}
        )
    return int(found)


async def test_intakes_own_commit_notifies_nothing(
    heard: Heard, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """The function alone, as the application calls it: the order, its event and its job
    are committed, and no listener hears of them from that transaction."""
    key = await stored_api_key(owner_engine, "agent@test.bank", ["orders:write"])
    async with owner_engine.connect() as conn:
        row = await submit_as_key((await conn.get_raw_connection()).driver_connection, key)
    assert row is not None
    order_id = row["submitted"]["id"]
    assert order_id is not None
    assert await risk_job_of(owner_engine, order_id) == row["submitted"]["risk_job_id"]
    await nothing_heard(heard)


async def test_a_new_order_wakes_the_streams_and_the_risk_workers_after_its_commit(
    heard: Heard, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    created = await client.post(ORDERS, json=SEED_ORDER, headers=cast["agent"])
    assert created.status_code == 201, created.text
    order = created.json()
    job_id = await risk_job_of(owner_engine, order["id"])
    wakeups = dict(await hear(heard, 3))
    desk_id = await desk_of(owner_engine, order["id"])
    assert wakeups[CHANNEL] == {"order_id": order["id"], "desk_id": desk_id}
    job_inserted = {"type": "job_inserted", "job_id": job_id}
    assert wakeups[f"procrastinate_queue_v1#{RISK_QUEUE}"] == job_inserted
    assert wakeups["procrastinate_any_queue_v1"] == job_inserted
    await nothing_heard(heard, 0.2)  # each once


async def test_an_order_with_a_key_wakes_after_its_commit(
    heard: Heard,
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    keyed_intake: str,
) -> None:
    """An order with an Idempotency-Key, in its one statement (migration 0038) or in a
    transaction: the same wake-ups, each once, sent after the commit as intake's are."""
    headers = cast["agent"] | {"Idempotency-Key": "wake-1"}
    created = await client.post(ORDERS, json=SEED_ORDER, headers=headers)
    assert created.status_code == 201, created.text
    order_id = created.json()["id"]
    wakeups = dict(await hear(heard, 3))
    desk_id = await desk_of(owner_engine, order_id)
    assert wakeups[CHANNEL] == {"order_id": order_id, "desk_id": desk_id}
    job_inserted = {"type": "job_inserted", "job_id": await risk_job_of(owner_engine, order_id)}
    assert wakeups[f"procrastinate_queue_v1#{RISK_QUEUE}"] == job_inserted
    assert wakeups["procrastinate_any_queue_v1"] == job_inserted
    await nothing_heard(heard, 0.2)  # each once


async def test_an_agents_order_through_mcp_wakes_after_its_commit(
    heard: Heard, live_server: LiveServer, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """submit_order, the tool agents use, records the order in a transaction: the same
    wake-ups after its commit."""
    async with mcp_over_http(live_server, cast["agent"]) as agent:
        order = order_of(await agent.call_tool("submit_order", MCP_ORDER))
    wakeups = dict(await hear(heard, 3))
    assert wakeups[CHANNEL] == {
        "order_id": order["id"],
        "desk_id": await desk_of(owner_engine, order["id"]),
    }
    job_id = await risk_job_of(owner_engine, order["id"])
    assert wakeups["procrastinate_any_queue_v1"] == {"type": "job_inserted", "job_id": job_id}
    await nothing_heard(heard, 0.2)


async def agent(owner_engine: AsyncEngine, cast: Cast) -> Principal:
    async with owner_engine.connect() as conn:
        desk = await conn.scalar(text("SELECT id FROM desks WHERE code = 'EQ-US'"))
    return Principal(cast.ids["agent"], "agent@test.bank", Role.AGENT, frozenset({desk}))


async def test_intakes_statement_in_a_transaction_notifies_nothing_and_later_ones_do(
    heard: Heard, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """tradeops_record_order as the application runs it, with no wake-ups handed over:
    nothing is heard of the order at the commit. A job deferred later in the same
    transaction is heard: the setting held for intake's statement only."""
    principal = await agent(owner_engine, cast)
    order = OrderCreate.model_validate(SEED_ORDER)
    async with transaction(owner_engine) as uow:
        await uow.set_context(principal)
        recorded = await uow.row(
            orders_repo.RECORD_ORDER,
            intake_values(order, None)
            | {
                "all_desks": False,
                "desk_ids": list(principal.desk_ids),
                "created_by": principal.user_id,
                "created_by_key_id": None,
            },
        )
        assert recorded is not None and recorded.risk_job_id is not None
        setting = await uow.driver.fetchval(
            "SELECT current_setting('tradeops.wake_after_commit', true)"
        )
        later = await defer_job(uow, CHECK_ORDER_RISK, RISK_QUEUE, {"order_id": recorded.id})
    assert setting in ("", None)
    job_inserted = {"type": "job_inserted", "job_id": later}
    assert dict(await hear(heard, 2)) == {
        f"procrastinate_queue_v1#{RISK_QUEUE}": job_inserted,
        "procrastinate_any_queue_v1": job_inserted,
    }
    await nothing_heard(heard)


async def test_an_order_rolled_back_wakes_no_one(
    heard: Heard, cast: Cast, owner_engine: AsyncEngine
) -> None:
    principal = await agent(owner_engine, cast)
    with pytest.raises(Rollback):
        async with transaction(owner_engine) as uow:
            await uow.set_context(principal)
            created = await submit_order(uow, principal, OrderCreate.model_validate(SEED_ORDER))
            assert created.order.id is not None
            raise Rollback  # the request fails after the order (and its job) were written
    await nothing_heard(heard)


async def test_the_installed_record_order_runs_intake_as_the_code_writes_it(
    owner_engine: AsyncEngine,
) -> None:
    """Migration 0028 holds a copy of SUBMIT_ORDER's statement: a change to SUBMIT_ORDER
    without a migration that installs the function again fails here."""
    source = await installed_source(owner_engine, "tradeops_record_order")
    installed = source.split("RETURN QUERY\n", 1)[1].split(";\n", 1)[0]
    assert installed.replace("\n", " ") == orders_repo.record_order_function()


async def test_every_trigger_that_notifies_on_intake_is_gated(owner_engine: AsyncEngine) -> None:
    """The triggers that fire on intake's inserts and call pg_notify all give way to a
    transaction that wakes after its commit: a new one (or procrastinate's, recreated by
    an upgrade of its schema) without the gate fails here."""
    async with owner_engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT t.tgname, pg_get_triggerdef(t.oid) AS definition"
                    " FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
                    " WHERE NOT t.tgisinternal AND p.prosrc LIKE '%pg_notify%'"
                    "  AND t.tgrelid = ANY(ARRAY['orders', 'order_events', 'audit_events',"
                    "   'procrastinate_jobs', 'procrastinate_events']::regclass[])"
                    "  AND t.tgtype & 4 = 4"  # fires on INSERT
                )
            )
        ).all()
    names = {row.tgname for row in rows}
    assert names == {"order_events_notify", "procrastinate_jobs_notify_queue_job_inserted_v1"}
    for row in rows:
        assert "tradeops.wake_after_commit" in row.definition, row.definition
