"""Verifying the audit trail stays bounded: incremental from the newest signed checkpoint by
default, the whole trail on request, in batches, with the server answering meanwhile."""

from __future__ import annotations

import asyncio
import time

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import Cast, bearer, make_api_key
from tests.integration.test_audit_trail import as_superuser, checkpoint, make_history, verify
from tradeops.audit import verification
from tradeops.auth.principal import SYSTEM
from tradeops.settings import Settings

API = "/api/v1"


async def first_event_after(owner_engine: AsyncEngine, upto: object) -> int:
    async with owner_engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT min(id) FROM audit_events WHERE id > :upto AND action = 'order.created'"),
            {"upto": upto},
        )
    assert isinstance(found, int)
    return found


async def test_incremental_verification_finds_a_change_after_the_checkpoint(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await make_history(client, cast)
    signed = await checkpoint(client, cast)
    await make_history(client, cast, orders=2)
    changed = await first_event_after(owner_engine, signed["upto_id"])
    await as_superuser(
        owner_engine,
        "UPDATE audit_events SET after = jsonb_set(after, '{quantity}', '9')"
        f" WHERE id = {changed}",
    )
    report = await verify(client, cast)
    assert report["ok"] is False and report["full"] is False
    assert report["from_checkpoint"] is not None
    assert report["first_broken"]["id"] == changed  # type: ignore[index]
    assert "content does not match" in report["first_broken"]["reason"]  # type: ignore[index]


async def test_only_a_full_verification_finds_a_change_the_checkpoint_covers(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await make_history(client, cast)
    signed = await checkpoint(client, cast)
    await make_history(client, cast, orders=1)
    await as_superuser(
        owner_engine,
        "UPDATE audit_events SET actor = 'user:666' WHERE id = (SELECT min(id) FROM audit_events)",
    )
    incremental = await verify(client, cast)
    assert incremental["ok"] is True  # the checkpoint's signature holds; nothing after changed
    assert 0 < int(str(incremental["events_checked"])) < int(str(signed["events"])) + 10
    full = await verify(client, cast, full=True)
    assert full["ok"] is False and full["full"] is True
    assert "content does not match" in full["first_broken"]["reason"]  # type: ignore[index]


async def test_small_batches_check_chains_and_checkpoints_across_batches(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, settings: Settings
) -> None:
    key = settings.audit_key.get_secret_value().encode()
    for _ in range(3):
        await make_history(client, cast, orders=2)
        await checkpoint(client, cast)
    await make_history(client, cast, orders=1)
    async with owner_engine.connect() as conn:
        total = await conn.scalar(text("SELECT count(*) FROM audit_events"))
        streams = await conn.scalar(text("SELECT count(*) FROM audit_stream_heads"))
    for batch in (1000, 3, 2, 1):
        report = await verification.verify(owner_engine, SYSTEM, key, full=True, batch=batch)
        assert report.ok, (batch, report)
        assert (report.events_checked, report.checkpoints_checked) == (total, 3)
        assert report.streams_checked == streams
    # A removed event: the next of its stream, read in a later batch, misses it.
    await as_superuser(
        owner_engine,
        "DELETE FROM audit_events WHERE id = (SELECT max(id) FROM audit_events"
        " WHERE action = 'order.created')",
    )
    broken = await verification.verify(owner_engine, SYSTEM, key, batch=1)
    assert not broken.ok and broken.first_broken is not None
    assert "sequence gap" in broken.first_broken.reason


async def test_verification_is_for_risk_and_admin_in_person_full_or_not(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """No key verifies (a desk-limited one would see part of the trail; test_audit_desks
    shows a desk-limited person refused too); traders and approvers may not either."""
    await make_history(client, cast, orders=1)
    _, narrowed = await make_api_key(owner_engine, "risk@test.bank", ["audit:read"], ["EQ-US"])
    _, every_desk = await make_api_key(owner_engine, "risk@test.bank", ["audit:read"])
    url = f"{API}/audit/verify"
    for params in ({}, {"full": "true"}):
        assert (await client.post(url, params=params)).status_code == 401
        for refused in (bearer(narrowed), bearer(every_desk), cast["trader"], cast["approver"]):
            assert (await client.post(url, params=params, headers=refused)).status_code == 403
        for allowed in ("risk", "admin"):
            answered = await client.post(url, params=params, headers=cast[allowed])
            assert answered.status_code == 200, answered.text
            assert answered.json()["ok"] is True


async def many_events(owner_engine: AsyncEngine, count: int) -> None:
    """Desk-less events over a thousand streams, chained by the trigger as every write is."""
    async with owner_engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO audit_events (stream, actor, action, entity, entity_id, after)"
                " SELECT 'user:' || n % 1000, 'user:0', 'user.updated', 'user', n % 1000,"
                " jsonb_build_object('n', n) FROM generate_series(1, :count) n"
            ),
            {"count": count},
        )


async def test_the_server_answers_while_it_verifies_a_long_trail(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await many_events(owner_engine, 50_000)
    assert (await client.get("/health/live")).status_code == 200  # warm: first use costs more
    started = time.perf_counter()
    verifying = asyncio.create_task(
        client.post(f"{API}/audit/verify", params={"full": "true"}, headers=cast["risk"])
    )
    latencies = []
    while not verifying.done():
        asked = time.perf_counter()
        live = await client.get("/health/live")
        latencies.append(time.perf_counter() - asked)
        assert live.status_code == 200
        await asyncio.sleep(0.02)
    report = (await verifying).json()
    took = time.perf_counter() - started
    assert report["ok"] is True and report["events_checked"] >= 50_000, report
    assert len(latencies) >= 10, (took, latencies)
    print(
        f"verified {report['events_checked']} in {took:.1f} s; /health/live max"
        f" {max(latencies) * 1000:.0f} ms over {len(latencies)}"
    )
    # A loop blocked by the hashing would answer late again and again, for seconds. On two
    # cores shared with another test process one answer may wait past 100 ms (103.9 ms seen
    # once in CI); every other must not, and none may take a quarter of a second.
    slowest = sorted(latencies)[-5:]
    assert slowest[-2] < 0.1 and slowest[-1] < 0.25, slowest
