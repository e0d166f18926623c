"""The audit trail: written with every change, append-only, and tampering is detected."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import PASSWORD, SEED_ORDER, Cast
from tradeops.audit import chain

API = "/api/v1"


async def make_history(client: httpx.AsyncClient, cast: Cast, orders: int = 3) -> list[int]:
    ids = []
    for n in range(orders):
        created = await client.post(
            f"{API}/orders", json={**SEED_ORDER, "quantity": n + 1}, headers=cast["trader"]
        )
        order_id = created.json()["id"]
        await client.post(f"{API}/orders/{order_id}/review", headers=cast["trader"])
        ids.append(order_id)
    return ids


async def checkpoint(client: httpx.AsyncClient, cast: Cast) -> dict[str, object]:
    made = await client.post(f"{API}/audit/checkpoints?settle_seconds=0", headers=cast["risk"])
    assert made.status_code == 200, made.text
    return dict(made.json())


async def verify(client: httpx.AsyncClient, cast: Cast, *, full: bool = False) -> dict[str, object]:
    params = {"full": "true"} if full else {}
    report = await client.post(f"{API}/audit/verify", params=params, headers=cast["risk"])
    assert report.status_code == 200, report.text
    return dict(report.json())


async def as_superuser(engine: AsyncEngine, *statements: str) -> None:
    """Tamper the way a database superuser could: with the append-only triggers off."""
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
        for sql in statements:
            await conn.execute(text(sql))
        await conn.execute(text("ALTER TABLE audit_events ENABLE TRIGGER USER"))


async def test_every_change_is_audited_with_actor_and_request_id(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    order = await client.post(
        f"{API}/orders", json=SEED_ORDER, headers={**cast["agent"], "X-Request-ID": "req-audit-1"}
    )
    await client.post(
        f"{API}/auth/token", data={"username": "trader@test.bank", "password": "wrong"}
    )
    await client.post(
        f"{API}/auth/token", data={"username": "trader@test.bank", "password": PASSWORD}
    )
    key = await client.post(
        f"{API}/api-keys", json={"name": "k", "scopes": ["orders:read"]}, headers=cast["trader"]
    )
    await client.delete(f"{API}/api-keys/{key.json()['id']}", headers=cast["trader"])
    await client.patch(f"{API}/instruments/AAPL", json={"restricted": True}, headers=cast["risk"])
    await client.patch(
        f"{API}/clients/CUST-1002", json={"status": "INACTIVE"}, headers=cast["admin"]
    )

    page = (
        await client.get(f"{API}/audit/events", params={"limit": 1000}, headers=cast["risk"])
    ).json()
    actions = [e["action"] for e in page["items"]]
    for expected in (
        "order.created",
        "login.failed",
        "login.succeeded",
        "api_key.created",
        "api_key.revoked",
        "instrument.updated",
        "client.updated",
    ):
        assert expected in actions, (expected, actions)
    # Sign-in records before any context: the database names the account tried.
    signed_in = {e["action"]: e["actor"] for e in page["items"] if e["entity"] == "login"}
    trader = f"user:{cast.ids['trader']}"
    assert signed_in == {"login.failed": trader, "login.succeeded": trader}
    created = next(e for e in page["items"] if e["action"] == "order.created")
    assert created["entity_id"] == str(order.json()["id"])
    assert created["request_id"] == "req-audit-1"
    assert created["api_key_id"] is not None and "/key:" in created["actor"]
    assert created["after"]["status"] == "PENDING"
    restricted = next(e for e in page["items"] if e["action"] == "instrument.updated")
    assert (restricted["before"]["restricted"], restricted["after"]["restricted"]) == (False, True)

    only_orders = (
        await client.get(f"{API}/audit/events", params={"entity": "order"}, headers=cast["admin"])
    ).json()
    assert {e["entity"] for e in only_orders["items"]} == {"order"}
    assert (await client.get(f"{API}/audit/events", headers=cast["trader"])).status_code == 403
    assert (await client.post(f"{API}/audit/verify", headers=cast["approver"])).status_code == 403


async def test_trail_is_append_only_even_for_a_superuser(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await make_history(client, cast, orders=1)
    for sql in (
        "UPDATE audit_events SET actor = 'x'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ):
        with pytest.raises(DBAPIError) as refused:
            async with owner_engine.begin() as conn:
                await conn.execute(text(sql))
        assert "append-only" in str(refused.value.orig)


async def test_intact_trail_with_checkpoints_verifies(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await make_history(client, cast)
    first = await checkpoint(client, cast)
    await make_history(client, cast, orders=2)
    second = await checkpoint(client, cast)
    assert first["created"] and second["created"]
    report = await verify(client, cast, full=True)
    assert report["ok"] is True, report
    assert report["checkpoints_checked"] == 2
    assert report["events_checked"] == second["events"]
    assert report["full"] is True and report["from_checkpoint"] is None
    await make_history(client, cast, orders=1)
    incremental = await verify(client, cast)
    assert incremental["ok"] is True, incremental
    assert incremental["full"] is False and incremental["checkpoints_checked"] == 1
    async with owner_engine.connect() as conn:
        newer = await conn.scalar(
            text("SELECT count(*) FROM audit_events WHERE id > :upto"),
            {"upto": second["upto_id"]},
        )
    assert incremental["events_checked"] == newer > 0


async def test_changed_payload_is_detected(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await make_history(client, cast)
    await as_superuser(
        owner_engine,
        "UPDATE audit_events SET after = jsonb_set(after, '{quantity}', '5000')"
        " WHERE id = (SELECT min(id) FROM audit_events WHERE action = 'order.created')",
    )
    report = await verify(client, cast)
    assert report["ok"] is False
    assert "content does not match" in report["first_broken"]["reason"]


async def test_deleted_event_is_detected(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await make_history(client, cast)
    await as_superuser(
        owner_engine,
        "DELETE FROM audit_events WHERE id = (SELECT min(id) FROM audit_events"
        " WHERE action = 'order.created')",
    )
    report = await verify(client, cast)
    assert report["ok"] is False
    assert "sequence gap" in report["first_broken"]["reason"]


async def test_swapped_hashes_are_detected(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await make_history(client, cast)
    await as_superuser(
        owner_engine,
        "UPDATE audit_events a SET hash = b.hash FROM audit_events b"
        " WHERE (a.id = (SELECT min(id) FROM audit_events)"
        "        AND b.id = (SELECT max(id) FROM audit_events))"
        "    OR (a.id = (SELECT max(id) FROM audit_events)"
        "        AND b.id = (SELECT min(id) FROM audit_events))",
    )
    report = await verify(client, cast)
    assert report["ok"] is False


async def test_truncated_tail_after_a_checkpoint_is_detected(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await make_history(client, cast)
    await checkpoint(client, cast)
    # Remove the newest events, and the stream heads that would betray them, as a thorough
    # attacker would: only the signed checkpoint still knows how long the trail was.
    await as_superuser(
        owner_engine,
        "DELETE FROM audit_events WHERE id > (SELECT max(id) - 3 FROM audit_events)",
        "UPDATE audit_stream_heads h SET seq = e.seq, hash = e.hash FROM ("
        " SELECT DISTINCT ON (stream) stream, seq, hash FROM audit_events"
        " ORDER BY stream, seq DESC) e WHERE e.stream = h.stream",
        "DELETE FROM audit_stream_heads h WHERE NOT EXISTS"
        " (SELECT 1 FROM audit_events e WHERE e.stream = h.stream)",
    )
    report = await verify(client, cast)
    assert report["ok"] is False
    assert "checkpoint" in report["first_broken"]["reason"]


async def test_forged_checkpoint_signature_is_detected(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await make_history(client, cast)
    await checkpoint(client, cast)
    async with owner_engine.begin() as conn:
        await conn.execute(text("ALTER TABLE audit_checkpoints DISABLE TRIGGER USER"))
        await conn.execute(text("UPDATE audit_checkpoints SET signature = repeat('0', 64)"))
        await conn.execute(text("ALTER TABLE audit_checkpoints ENABLE TRIGGER USER"))
    report = await verify(client, cast)
    assert report["ok"] is False


def test_cli_verify_reports_and_exits_nonzero_when_broken(database_url: str) -> None:
    env = {**os.environ, "TRADEOPS_DATABASE_URL": database_url, "TRADEOPS_ENV": "test"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tradeops.cli", "audit", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO audit_events (stream, actor, action, entity, entity_id, after)"
            " VALUES ('desk:X', 'user:0', 'desk.created', 'desk', 'X', '{\"code\": \"X\"}')"
        )
    assert cli("checkpoint").returncode == 0
    ok = cli("verify")
    assert ok.returncode == 0, ok.stderr
    assert '"ok": true' in ok.stdout
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_events DISABLE TRIGGER USER")
        conn.execute("UPDATE audit_events SET actor = 'user:666'")
        conn.execute("ALTER TABLE audit_events ENABLE TRIGGER USER")
    # The event changed is one the checkpoint covers: only a full verification hashes it again.
    assert cli("verify").returncode == 0
    broken = cli("verify", "--full")
    assert broken.returncode == 1
    assert '"ok": false' in broken.stdout


async def test_the_database_hashes_an_event_as_the_verification_does(
    owner_engine: AsyncEngine,
) -> None:
    """audit_event_hash gives the hash tradeops.audit.chain recomputes, with every optional
    field present and absent: a change to either (as one tried in PL/pgSQL) fails here."""
    at = datetime(2026, 11, 28, 15, 4, 5, 123456, tzinfo=UTC)
    cases = [
        ("7" * 64, "order:42", 3, "user:7/key:3", 3, "req-1", '{"a": "b:c;"}', '{"n": 1}'),
        ("0" * 64, "client:C-1", 1, "system", None, None, None, None),
    ]
    async with owner_engine.connect() as conn:
        for prev, stream, seq, actor, key, request, before, after in cases:
            stored = await conn.scalar(
                text(
                    "SELECT audit_event_hash(:prev, :stream, :seq, :at, :actor, :key,"
                    " :request, 'order.created', 'order', '42', CAST(:before AS jsonb),"
                    " CAST(:after AS jsonb))"
                ),
                {
                    "prev": prev,
                    "stream": stream,
                    "seq": seq,
                    "at": at,
                    "actor": actor,
                    "key": key,
                    "request": request,
                    "before": before,
                    "after": after,
                },
            )
            rendered = [
                await conn.scalar(text("SELECT CAST(:v AS jsonb)::text"), {"v": value})
                for value in (before, after)
            ]
            assert stored == chain.event_hash(
                prev_hash=prev,
                stream=stream,
                seq=seq,
                at=at,
                actor=actor,
                api_key_id=key,
                request_id=request,
                action="order.created",
                entity="order",
                entity_id="42",
                before_text=rendered[0],
                after_text=rendered[1],
            )
