"""Row-level security proven at the SQL level: a query that forgets its WHERE still sees only
the principal's desks, and without a context it sees nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.factories import SEED_ORDER, Cast
from tests.owner import driver_of
from tradeops.auth.principal import Principal, Role
from tradeops.db.uow import UnitOfWork, context_parameters, sqlstate_of


@pytest.fixture
async def orders_on_both_desks(client: httpx.AsyncClient, cast: Cast) -> dict[str, int]:
    eq = await client.post("/api/v1/orders", json=SEED_ORDER, headers=cast["trader"])
    fi = await client.post(
        "/api/v1/orders", json={**SEED_ORDER, "client_id": "CUST-2001"}, headers=cast["trader_fi"]
    )
    assert eq.status_code == fi.status_code == 201
    return {"EQ-US": eq.json()["id"], "FI-EU": fi.json()["id"]}


async def desk_id(engine: AsyncEngine, code: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT id FROM desks WHERE code = :c"), {"c": code}))


@pytest.fixture
async def connection(owner_engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A superuser's connection (as the embedded server gives us), in a transaction."""
    async with owner_engine.connect() as conn, conn.begin() as tx:
        yield conn
        await tx.rollback()


async def as_principal(conn: AsyncConnection, principal: Principal) -> None:
    """Set a principal's context inside the connection's open transaction."""
    await conn.execute(text("SELECT 1"))  # SQLAlchemy begins its transaction lazily
    await UnitOfWork(await driver_of(conn)).set_context(principal, "rls-test")


async def test_trader_sees_only_own_desk_without_any_where(
    connection: AsyncConnection,
    owner_engine: AsyncEngine,
    cast: Cast,
    orders_on_both_desks: dict[str, int],
) -> None:
    eq_us = await desk_id(owner_engine, "EQ-US")
    trader = Principal(cast.ids["trader"], "trader@test.bank", Role.TRADER, frozenset({eq_us}))
    await as_principal(connection, trader)
    rows = (await connection.execute(text("SELECT id, desk_id FROM orders"))).all()
    assert [r.id for r in rows] == [orders_on_both_desks["EQ-US"]]
    clients = set((await connection.execute(text("SELECT external_id FROM clients"))).scalars())
    assert clients == {"CUST-1001", "CUST-1002"}
    events = set((await connection.execute(text("SELECT order_id FROM order_events"))).scalars())
    assert events == {orders_on_both_desks["EQ-US"]}


async def test_risk_sees_every_desk(
    connection: AsyncConnection, cast: Cast, orders_on_both_desks: dict[str, int]
) -> None:
    risk = Principal(cast.ids["risk"], "risk@test.bank", Role.RISK, all_desks=True)
    await as_principal(connection, risk)
    ids = set((await connection.execute(text("SELECT id FROM orders"))).scalars())
    assert ids == set(orders_on_both_desks.values())


async def test_no_context_sees_nothing(
    owner_engine: AsyncEngine, orders_on_both_desks: dict[str, int]
) -> None:
    async with owner_engine.connect() as conn, conn.begin():
        await conn.execute(text("SET LOCAL ROLE tradeops_app"))
        for table in ("orders", "order_events", "clients", "instruments", "desks", "users"):
            assert await conn.scalar(text(f"SELECT count(*) FROM {table}")) == 0, table


async def test_context_left_empty_by_a_pooled_connection_fails_closed(
    owner_engine: AsyncEngine, orders_on_both_desks: dict[str, int]
) -> None:
    async with owner_engine.connect() as conn, conn.begin():
        # Once set on a session, a custom setting reads back as '' rather than NULL.
        for name in ("user_id", "role", "desk_ids", "all_desks"):
            await conn.execute(text(f"SELECT set_config('tradeops.{name}', '', true)"))
        await conn.execute(text("SET LOCAL ROLE tradeops_app"))
        assert await conn.scalar(text("SELECT count(*) FROM orders")) == 0


async def test_update_of_another_desks_row_changes_nothing(
    connection: AsyncConnection,
    owner_engine: AsyncEngine,
    cast: Cast,
    orders_on_both_desks: dict[str, int],
) -> None:
    fi_eu = await desk_id(owner_engine, "FI-EU")
    trader_fi = Principal(
        cast.ids["trader_fi"], "trader.fi@test.bank", Role.TRADER, frozenset({fi_eu})
    )
    await as_principal(connection, trader_fi)
    result = await connection.execute(
        text("UPDATE orders SET status = 'CANCELLED' WHERE id = :id"),
        {"id": orders_on_both_desks["EQ-US"]},
    )
    assert result.rowcount == 0


async def test_insert_for_another_desk_is_refused(
    connection: AsyncConnection,
    owner_engine: AsyncEngine,
    cast: Cast,
    orders_on_both_desks: dict[str, int],
) -> None:
    async with owner_engine.connect() as owner:
        eq = (
            await owner.execute(
                text(
                    "SELECT c.desk_id, c.id AS client_id, i.id AS instrument_id"
                    " FROM clients c, instruments i"
                    " WHERE c.external_id = 'CUST-1001' AND i.symbol = 'AAPL'"
                )
            )
        ).one()
    fi_eu = await desk_id(owner_engine, "FI-EU")
    trader_fi = Principal(
        cast.ids["trader_fi"], "trader.fi@test.bank", Role.TRADER, frozenset({fi_eu})
    )
    await as_principal(connection, trader_fi)
    with pytest.raises(DBAPIError) as refused:
        await connection.execute(
            text(
                "INSERT INTO orders (desk_id, client_id, instrument_id, side, order_type, quantity,"
                " price, currency, created_by)"
                " VALUES (:desk_id, :client_id, :instrument_id, 'BUY', 'LIMIT', 1, 1, 'USD', :me)"
            ),
            {**eq._mapping, "me": cast.ids["trader_fi"]},
        )
    # The client row is invisible to this trader (trigger: 23503), and the policy (42501)
    # would refuse the desk anyway.
    assert sqlstate_of(refused.value) in {"23503", "42501"}


async def test_application_role_cannot_read_secrets(owner_engine: AsyncEngine, cast: Cast) -> None:
    for sql in ("SELECT password_hash FROM users", "SELECT hash FROM api_keys"):
        async with owner_engine.connect() as conn, conn.begin():
            params = context_parameters(
                Principal(cast.ids["admin"], "admin@test.bank", Role.ADMIN, all_desks=True), None
            )
            await as_principal(
                conn, Principal(cast.ids["admin"], "admin@test.bank", Role.ADMIN, all_desks=True)
            )
            assert params["role"] == "tradeops_app"
            with pytest.raises(DBAPIError) as denied:
                await conn.execute(text(sql))
            assert "permission denied" in str(denied.value.orig)


async def test_every_table_forces_row_level_security(owner_engine: AsyncEngine) -> None:
    async with owner_engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class"
                    " WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
                    " AND relname NOT IN ('alembic_version') AND relname NOT LIKE 'procrastinate%'"
                )
            )
        ).all()
        role = (
            await conn.execute(
                text(
                    "SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles"
                    " WHERE rolname = 'tradeops_app'"
                )
            )
        ).one()
        owned = await conn.scalar(
            text("SELECT count(*) FROM pg_tables WHERE tableowner = 'tradeops_app'")
        )
    assert rows and all(r.relrowsecurity and r.relforcerowsecurity for r in rows), rows
    assert tuple(role) == (False, False, False)
    assert owned == 0
