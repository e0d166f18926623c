"""A new order's wake-ups are sent after its commit, not at it (migration 0027, db/wakeups.py).

PostgreSQL serializes the commits of transactions that NOTIFY. POST /orders in one
statement sets `tradeops.wake_after_commit`: its transaction sends no NOTIFY, and the
application sends the same wake-ups once the commit is known. Every other writer still
notifies at its commit.
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

from tests.factories import SEED_ORDER, Cast, stored_api_key, submit_as_key
from tradeops.db.urls import libpq_url
from tradeops.jobs.defer import RISK_QUEUE
from tradeops.orders.stream import CHANNEL

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


async def test_an_order_in_a_transaction_still_notifies_at_its_commit(
    heard: Heard, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """An Idempotency-Key takes the transaction: its triggers notify, as every writer but
    the one statement does (the event's notification carries the event's id too)."""
    headers = cast["agent"] | {"Idempotency-Key": "wake-1"}
    created = await client.post(ORDERS, json=SEED_ORDER, headers=headers)
    assert created.status_code == 201, created.text
    wakeups = dict(await hear(heard, 3))
    assert wakeups[CHANNEL]["order_id"] == created.json()["id"]
    assert "id" in wakeups[CHANNEL]
    job_id = await risk_job_of(owner_engine, created.json()["id"])
    assert wakeups["procrastinate_any_queue_v1"]["job_id"] == job_id


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
