"""The audit trail by desk (issue 12 item 2, issue 18 item 6): every event carries the desk it
concerns, row-level security shows a caller only their desks' events (and the desk-less ones),
verification still covers every desk, payload decimals are strings and actors have emails."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.conftest import create_database, drop_database
from tests.factories import Cast, approved_order, bearer, make_api_key
from tests.integration.test_audit_trail import as_superuser, verify
from tests.owner import driver_of, owner_engine_on
from tradeops.audit import service as audit
from tradeops.audit import verification
from tradeops.auth.principal import SYSTEM, Principal, Role
from tradeops.db import migrate
from tradeops.db.uow import UnitOfWork, run_in_transaction, sqlstate_of
from tradeops.errors import Forbidden

API = "/api/v1"
FILL = {
    "quantity": "20",
    "price": "192.50",
    "venue": "XNAS",
    "executed_at": "2026-11-23T14:30:05.125Z",
}


async def history_on_both_desks(
    client: httpx.AsyncClient, cast: Cast, engine: AsyncEngine
) -> dict[str, int]:
    """Orders, fills (execution and position events), a client change and a risk limit on
    each desk, plus desk-less events (an API key, an instrument change)."""
    orders = {}
    for desk, maker, client_id, venue_id in (
        ("EQ-US", "trader", "CUST-1001", "X-EQ"),
        ("FI-EU", "trader_fi", "CUST-2001", "X-FI"),
    ):
        order_id = await approved_order(client, cast, engine, maker=maker, client_id=client_id)
        filled = await client.post(
            f"{API}/orders/{order_id}/executions",
            json={**FILL, "external_id": venue_id},
            headers=cast["admin"],
        )
        assert filled.status_code == 201, filled.text
        changed = await client.patch(
            f"{API}/clients/{client_id}", json={"name": f"{desk} client"}, headers=cast["admin"]
        )
        assert changed.status_code == 200, changed.text
        limit = await client.put(
            f"{API}/risk/limits",
            json={"desk": desk, "max_order_notional": "1000000.50"},
            headers=cast["risk"],
        )
        assert limit.status_code == 200, limit.text
        orders[desk] = order_id
    key = await client.post(
        f"{API}/api-keys", json={"name": "k", "scopes": ["orders:read"]}, headers=cast["trader"]
    )
    assert key.status_code == 201, key.text
    await client.patch(f"{API}/instruments/MSFT", json={"restricted": True}, headers=cast["risk"])
    return orders


async def all_events(client: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    page = await client.get(f"{API}/audit/events", params={"limit": 1000}, headers=headers)
    assert page.status_code == 200, page.text
    return list(page.json()["items"])


def fi_eu_events(events: list[dict[str, Any]], fi_order: int, fi_desk: int) -> list[dict[str, Any]]:
    """Events that concern FI-EU, recognised by what they name, not by their desk column."""

    def concerns_fi(event: dict[str, Any]) -> bool:
        payload = event["after"] or event["before"] or {}
        return (
            (event["entity"] == "order" and event["entity_id"] == str(fi_order))
            or (event["entity"] == "execution" and payload.get("order_id") == fi_order)
            or event["entity_id"].startswith("CUST-2001")
            or (event["entity"] == "risk_limit" and payload.get("desk_id") == fi_desk)
        )

    return [e for e in events if concerns_fi(e)]


@pytest.fixture
async def narrowed_risk_key(owner_engine: AsyncEngine, cast: Cast) -> dict[str, str]:
    _, key = await make_api_key(owner_engine, "risk@test.bank", ["audit:read"], desks=["EQ-US"])
    return bearer(key)


async def test_a_narrowed_key_sees_only_its_desks_and_desk_less_events(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    narrowed_risk_key: dict[str, str],
) -> None:
    orders = await history_on_both_desks(client, cast, owner_engine)
    fi_desk = (await desk_ids(owner_engine))["FI-EU"]

    everything = await all_events(client, cast["risk"])
    entities = {e["entity"] for e in fi_eu_events(everything, orders["FI-EU"], fi_desk)}
    assert entities == {"order", "execution", "position", "client", "risk_limit"}

    narrowed = await all_events(client, narrowed_risk_key)
    assert fi_eu_events(narrowed, orders["FI-EU"], fi_desk) == []
    assert {e["entity"] for e in narrowed} >= {
        "order",
        "execution",
        "position",
        "client",
        "risk_limit",
        "api_key",
        "instrument",
    }
    assert {e["desk"] for e in narrowed} == {"EQ-US", None}
    eq_order = [e for e in narrowed if e["stream"] == f"order:{orders['EQ-US']}"]
    assert eq_order and all(e["desk"] == "EQ-US" for e in eq_order)
    # The order itself is 404 for this key, and so is the trail of it.
    direct = await client.get(
        f"{API}/audit/events",
        params={"entity": "order", "entity_id": str(orders["FI-EU"])},
        headers=narrowed_risk_key,
    )
    assert direct.json()["items"] == []


async def test_desk_filter_on_the_list(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await history_on_both_desks(client, cast, owner_engine)
    page = await client.get(
        f"{API}/audit/events", params={"desk": "FI-EU", "limit": 1000}, headers=cast["admin"]
    )
    assert page.status_code == 200, page.text
    assert {e["desk"] for e in page.json()["items"]} == {"FI-EU"}


@pytest.fixture
async def connection(owner_engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with owner_engine.connect() as conn, conn.begin() as tx:
        yield conn
        await tx.rollback()


async def desk_ids(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT code, id FROM desks"))
        return {r.code: r.id for r in rows}


async def as_principal(conn: AsyncConnection, principal: Principal) -> None:
    await conn.execute(text("SELECT 1"))  # SQLAlchemy begins its transaction lazily
    await UnitOfWork(await driver_of(conn)).set_context(principal, "audit-desks-test")


async def test_row_level_security_hides_other_desks_events_from_sql(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    connection: AsyncConnection,
) -> None:
    await history_on_both_desks(client, cast, owner_engine)
    desks = await desk_ids(owner_engine)
    async with owner_engine.connect() as conn:
        stored = (await conn.execute(text("SELECT entity, desk_id FROM audit_events"))).all()
    bound = {"order", "execution", "position", "client", "risk_limit"}
    assert all((r.desk_id is not None) == (r.entity in bound) for r in stored), stored
    assert {r.desk_id for r in stored} == {desks["EQ-US"], desks["FI-EU"], None}

    # What a key narrowed to EQ-US gets: the risk role, EQ-US only. No WHERE in the query.
    narrowed = Principal(
        cast.ids["risk"], "risk@test.bank", Role.RISK, frozenset({desks["EQ-US"]}), api_key_id=1
    )
    await as_principal(connection, narrowed)
    seen = set((await connection.execute(text("SELECT desk_id FROM audit_events"))).scalars())
    assert seen == {desks["EQ-US"], None}
    # Nor may it sign a checkpoint over the part of the trail it sees.
    with pytest.raises(DBAPIError):
        async with connection.begin_nested():
            await connection.execute(
                text(
                    "INSERT INTO audit_checkpoints (upto_id, events, root_hash, signature, at)"
                    " VALUES (1, 1, 'x', 'x', now())"
                )
            )

    # A person limited to FI-EU (no key) sees FI-EU's and the desk-less events.
    fi_only = Principal(cast.ids["risk"], "risk@test.bank", Role.RISK, frozenset({desks["FI-EU"]}))
    await as_principal(connection, fi_only)
    seen = set((await connection.execute(text("SELECT desk_id FROM audit_events"))).scalars())
    assert seen == {desks["FI-EU"], None}
    # A trader is no auditor: not even the own desk's events.
    trader = Principal(
        cast.ids["trader"], "trader@test.bank", Role.TRADER, frozenset(desks.values())
    )
    await as_principal(connection, trader)
    assert await connection.scalar(text("SELECT count(*) FROM audit_events")) == 0
    # A writer may not file an event under a desk it does not cover (RLS, not the CHECK).
    eq_trader = Principal(
        cast.ids["trader"], "trader@test.bank", Role.TRADER, frozenset({desks["EQ-US"]})
    )
    await as_principal(connection, eq_trader)
    with pytest.raises(DBAPIError) as refused:
        async with connection.begin_nested():
            await connection.execute(
                text(
                    "INSERT INTO audit_events (stream, actor, action, entity, entity_id, after)"
                    " VALUES ('order:999', 'user:1', 'x', 'order', '999',"
                    " jsonb_build_object('desk_id', CAST(:fi AS bigint)))"
                ),
                {"fi": desks["FI-EU"]},
            )
    assert sqlstate_of(refused.value) == "42501"


async def test_a_desk_bound_event_without_a_desk_is_refused(owner_engine: AsyncEngine) -> None:
    """Fail closed: an event the database cannot place on a desk would otherwise be shown to
    every auditor, so it is refused instead."""
    with pytest.raises(DBAPIError) as refused:
        async with owner_engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO audit_events (stream, actor, action, entity, entity_id, after)"
                    " VALUES ('client:NOPE', 'user:0', 'x', 'client', 'NOPE', '{}')"
                )
            )
    assert sqlstate_of(refused.value) == "23514"


async def test_verify_covers_every_desk_and_refuses_a_partial_view(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, app: Any
) -> None:
    orders = await history_on_both_desks(client, cast, owner_engine)
    _, key = await make_api_key(owner_engine, "risk@test.bank", ["audit:read"], desks=["EQ-US"])
    for path in ("verify", "checkpoints"):
        refused = await client.post(f"{API}/audit/{path}", headers=bearer(key))
        assert refused.status_code == 403, refused.text
    report = await verify(client, cast)
    assert report["ok"] is True, report
    async with owner_engine.connect() as conn:
        total = await conn.scalar(text("SELECT count(*) FROM audit_events"))
    assert report["events_checked"] == total

    desks = await desk_ids(owner_engine)
    partial = Principal(cast.ids["risk"], "risk@test.bank", Role.RISK, frozenset({desks["EQ-US"]}))
    with pytest.raises(Forbidden):
        await verification.verify(owner_engine, partial, b"k")
    with pytest.raises(Forbidden):
        await run_in_transaction(
            owner_engine, partial, lambda uow: audit.create_checkpoint(uow, partial, b"k")
        )

    await as_superuser(
        owner_engine,
        "UPDATE audit_events SET after = jsonb_set(after, '{quantity}', '\"5000\"')"
        f" WHERE entity = 'order' AND entity_id = '{orders['FI-EU']}'"
        " AND action = 'order.created'",
    )
    broken = await verify(client, cast)
    assert broken["ok"] is False
    assert "content does not match" in broken["first_broken"]["reason"]


async def test_a_relabelled_desk_is_detected(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """desk_id is outside the hash; verify checks it against the hashed fields instead."""
    orders = await history_on_both_desks(client, cast, owner_engine)
    desks = await desk_ids(owner_engine)
    await as_superuser(
        owner_engine,
        f"UPDATE audit_events SET desk_id = {desks['EQ-US']}"
        f" WHERE entity = 'order' AND entity_id = '{orders['FI-EU']}'",
    )
    broken = await verify(client, cast)
    assert broken["ok"] is False
    assert "desk label" in broken["first_broken"]["reason"]


async def test_new_payloads_show_decimals_as_strings_and_actors_with_email(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await history_on_both_desks(client, cast, owner_engine)
    events = await all_events(client, cast["risk"])
    created = next(e for e in events if e["action"] == "order.created")
    assert created["after"]["quantity"] == "50"
    assert created["after"]["price"] == "192.55"
    assert created["after"]["filled_quantity"] == "0"
    assert isinstance(created["after"]["id"], int) and created["after"]["version"] == 1
    async with owner_engine.connect() as conn:
        stored = await conn.scalar(
            text(
                "SELECT jsonb_typeof(after->'quantity') FROM audit_events"
                " WHERE action = 'order.created' LIMIT 1"
            )
        )
    assert stored == "number"  # rendered on the way out; what was hashed stays as written
    position = next(e for e in events if e["entity"] == "position")
    assert position["after"]["quantity"] == "20"
    assert position["after"]["avg_cost"] == "192.5"
    execution = next(e for e in events if e["entity"] == "execution")
    assert execution["after"]["price"] == "192.5"
    limit = next(e for e in events if e["entity"] == "risk_limit")
    assert limit["after"]["max_order_notional"] == "1000000.5"

    by_actor = {e["actor"]: e["actor_email"] for e in events}
    assert by_actor[f"user:{cast.ids['trader']}"] == "trader@test.bank"
    assert by_actor[f"user:{cast.ids['admin']}"] == "admin@test.bank"
    assert by_actor["system:risk-check"] is None if "system:risk-check" in by_actor else True
    agent = await client.post(
        f"{API}/orders",
        json={
            "client_id": "CUST-1001",
            "symbol": "AAPL",
            "side": "BUY",
            "quantity": 5,
            "price": "1",
        },
        headers=cast["agent"],
    )
    assert agent.status_code == 201, agent.text
    events = await all_events(client, cast["risk"])
    by_key = next(e for e in events if "/key:" in e["actor"])
    assert by_key["actor_email"] == "agent@test.bank"  # the key's owner


async def test_existing_events_get_their_desk_and_still_verify(postgres_server_url: str) -> None:
    """Migration 0009 on a trail written before it: desks filled in, no hash changed."""
    import psycopg

    url = create_database(postgres_server_url, prefix="tradeops_audit_desks")
    try:
        migrate.upgrade(url, "0008")
        with psycopg.connect(url, autocommit=True) as conn:
            desk = conn.execute(
                "INSERT INTO desks (code, name) VALUES ('FI-EU', 'FI') RETURNING id"
            ).fetchone()
            assert desk is not None
            conn.execute(
                "INSERT INTO clients (external_id, name, desk_id, status)"
                " VALUES ('CUST-2001', 'c', %s, 'ACTIVE')",
                (desk[0],),
            )
            for entity, entity_id, after in (
                ("order", "7", f'{{"id": 7, "desk_id": {desk[0]}, "quantity": 50.000000}}'),
                ("client", "CUST-2001", '{"desk": "FI-EU"}'),
                ("user", "3", '{"email": "x@y"}'),
            ):
                conn.execute(
                    "INSERT INTO audit_events (stream, actor, action, entity, entity_id, after)"
                    " VALUES (%s || ':' || %s, 'user:0', 'x', %s, %s, %s)",
                    (entity, entity_id, entity, entity_id, after),
                )
            hashes = conn.execute("SELECT id, hash FROM audit_events ORDER BY id").fetchall()
        migrate.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT id, hash, desk_id, after->'quantity' AS q FROM audit_events ORDER BY id"
            ).fetchall()
        assert [(r[0], r[1]) for r in rows] == hashes  # history is not rewritten
        assert [r[2] for r in rows] == [desk[0], desk[0], None]
        assert rows[0][3] == 50  # the old payload stays as it was hashed
        engine = owner_engine_on(url)
        try:
            report = await verification.verify(engine, SYSTEM, b"k")
        finally:
            await engine.dispose()
        assert report.ok and report.events_checked == 3, report
    finally:
        drop_database(postgres_server_url, url)
