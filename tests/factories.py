"""Factories: reference data as tests need it, created through the real services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from argon2 import PasswordHasher
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tradeops.auth import api_keys
from tradeops.auth.api_keys import ApiKeyCreate
from tradeops.auth.keys import generate_key, hash_key, parse_key
from tradeops.auth.permissions import Action, who_may
from tradeops.auth.principal import SYSTEM
from tradeops.auth.tokens import TokenService
from tradeops.clients import service as clients
from tradeops.clients.schemas import ClientCreate
from tradeops.db.uow import APP_ROLE, run_in_transaction
from tradeops.desks import service as desks
from tradeops.desks.service import DeskIn
from tradeops.executions import router as executions_router
from tradeops.instruments import service as instruments
from tradeops.instruments.schemas import InstrumentCreate
from tradeops.orders import router as orders_router

SEED_ORDER: dict[str, Any] = {
    "client_id": "CUST-1001",
    "symbol": "AAPL",
    "side": "BUY",
    "quantity": 50,
    "price": 192.55,
}


async def make_desk(engine: AsyncEngine, code: str = "EQ-US", name: str = "US Equities") -> None:
    await run_in_transaction(
        engine, SYSTEM, lambda uow: desks.create_desk(uow, SYSTEM, DeskIn(code=code, name=name))
    )


async def make_client(
    engine: AsyncEngine, client_id: str = "CUST-1001", desk: str = "EQ-US", status: str = "ACTIVE"
) -> None:
    data = ClientCreate(client_id=client_id, name=f"Client {client_id}", desk=desk, status=status)  # type: ignore[arg-type]
    await run_in_transaction(engine, SYSTEM, lambda uow: clients.create_client(uow, SYSTEM, data))


async def make_instrument(
    engine: AsyncEngine,
    symbol: str = "AAPL",
    *,
    currency: str = "USD",
    lot_size: str = "1",
    tick_size: str = "0.01",
    restricted: bool = False,
    active: bool = True,
) -> None:
    data = InstrumentCreate(
        symbol=symbol,
        name=f"{symbol} Inc.",
        currency=currency,
        lot_size=Decimal(lot_size),
        tick_size=Decimal(tick_size),
        restricted=restricted,
        active=active,
    )
    await run_in_transaction(
        engine, SYSTEM, lambda uow: instruments.create_instrument(uow, SYSTEM, data)
    )


async def make_reference_data(engine: AsyncEngine) -> None:
    """Two desks, CUST-1001/1002 on EQ-US, CUST-2001 on FI-EU, AAPL and MSFT."""
    await make_desk(engine, "EQ-US", "US Equities")
    await make_desk(engine, "FI-EU", "European Fixed Income")
    await make_client(engine, "CUST-1001", "EQ-US")
    await make_client(engine, "CUST-1002", "EQ-US")
    await make_client(engine, "CUST-2001", "FI-EU")
    await make_instrument(engine, "AAPL")
    await make_instrument(engine, "MSFT")


# --- people -------------------------------------------------------------------------------

PASSWORD = "correct-horse-battery-staple"
# argon2id reads its cost from the stored hash, so a test user's hash made at the lowest cost
# is checked by the real sign-in code in a millisecond instead of ~0.3 s of CPU per sign-in
# (the suite signs in hundreds of times). Production hashes, the dummy hash checked for
# unknown emails and every hash the application makes keep argon2-cffi's RFC 9106 costs.
_CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
_password_hash: list[str] = []


def password_hash() -> str:
    """The test password's hash, made once per session."""
    if not _password_hash:
        _password_hash.append(_CHEAP.hash(PASSWORD))
    return _password_hash[0]


async def make_user(
    engine: AsyncEngine,
    email: str,
    role: str,
    desks: list[str] | None = None,
    *,
    with_password: bool = True,
    active: bool = True,
) -> int:
    async with engine.begin() as conn:
        user_id = await conn.scalar(
            text(
                "INSERT INTO users (email, name, role, password_hash, active)"
                " VALUES (:email, :name, :role, :hash, :active) RETURNING id"
            ),
            {
                "email": email,
                "name": email.split("@")[0],
                "role": role,
                "hash": password_hash() if with_password else None,
                "active": active,
            },
        )
        for code in desks or []:
            await conn.execute(
                text(
                    "INSERT INTO desk_members (user_id, desk_id)"
                    " SELECT :user_id, id FROM desks WHERE code = :code"
                ),
                {"user_id": user_id, "code": code},
            )
    return int(user_id)


async def make_api_key(
    engine: AsyncEngine,
    owner_email: str,
    scopes: list[str],
    desks: list[str] | None = None,
    expires_in_days: int | None = None,
) -> tuple[int, str]:
    data = ApiKeyCreate(
        name="test key",
        scopes=scopes,
        desks=desks,
        owner_email=owner_email,
        expires_in_days=expires_in_days,
    )
    created = await run_in_transaction(
        engine, SYSTEM, lambda uow: api_keys.create_api_key(uow, SYSTEM, data)
    )
    return created.id, created.key


async def stored_api_key(engine: AsyncEngine, owner_email: str, scopes: list[str]) -> str:
    """A key written straight into the table, past the service's checks: one granted a scope
    its owner's role can never use, as keys made before that check (or by hand) may be."""
    key, prefix, key_hash = generate_key()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO api_keys (owner_user_id, name, prefix, hash, scopes)"
                " SELECT id, 'stored key', :prefix, :hash, :scopes FROM users"
                " WHERE email = :email"
            ),
            {"prefix": prefix, "hash": key_hash, "scopes": scopes, "email": owner_email},
        )
    return key


# tradeops_submit_order called as the application calls it (migration 0025), with an API key
# ($1, $2), the application role ($3), who may submit ($4 roles, $5 scope) and the lock
# timeout ($6): SEED_ORDER's order, its risk check on the queue "risk".
SUBMIT_AS_KEY = (
    "SELECT (caller).user_id, submitted FROM tradeops_submit_order("
    "$1, $2, NULL, NULL, $3, 'req', $4, $5, $6, 'CUST-1001', 'AAPL', 'BUY', 'LIMIT', 'DAY',"
    " NULL, 50, 192.55, NULL, 'CREATED', '{}', 'order.created', 'risk', 'check')"
)


async def submit_as_key(
    raw: asyncpg.Connection, key: str, lock_timeout_ms: int = 5000
) -> asyncpg.Record | None:
    """SEED_ORDER submitted in one statement with `key`, straight to the function."""
    rule = who_may(Action.SUBMIT_ORDER)
    arguments = (parse_key(key), hash_key(key), APP_ROLE, rule["roles"], rule["scope"])
    return await raw.fetchrow(SUBMIT_AS_KEY, *arguments, lock_timeout_ms)


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


ALL_SCOPES = [
    "orders:read",
    "orders:write",
    "orders:review",
    "clients:read",
    "reference:read",
    "positions:read",
]


@dataclass
class Cast:
    """The usual people, each with request headers: trader and approver on EQ-US, a trader on
    FI-EU, risk and admin (all desks), and an agent's API key on EQ-US."""

    ids: dict[str, int] = field(default_factory=dict)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)

    def __getitem__(self, who: str) -> dict[str, str]:
        return self.headers[who]


PEOPLE = [
    ("trader", "trader@test.bank", "trader", ["EQ-US"]),
    ("trader2", "trader2@test.bank", "trader", ["EQ-US"]),
    ("trader_fi", "trader.fi@test.bank", "trader", ["FI-EU"]),
    ("approver", "approver@test.bank", "approver", ["EQ-US"]),
    ("approver_fi", "approver.fi@test.bank", "approver", ["FI-EU"]),
    ("risk", "risk@test.bank", "risk", []),
    ("admin", "admin@test.bank", "admin", []),
]


async def make_cast(engine: AsyncEngine, tokens: TokenService) -> Cast:
    cast = Cast()
    for who, email, role, desk_codes in PEOPLE:
        user_id = await make_user(engine, email, role, desk_codes)
        cast.ids[who] = user_id
        cast.headers[who] = bearer(tokens.issue(user_id, role)[0])
    cast.ids["agent"] = await make_user(
        engine, "agent@test.bank", "agent", ["EQ-US"], with_password=False
    )
    _, key = await make_api_key(engine, "agent@test.bank", ALL_SCOPES)
    cast.headers["agent"] = bearer(key)
    cast.headers["nobody"] = {}
    return cast


async def pass_risk_check(engine: AsyncEngine, order_id: int) -> None:
    """Mark an order's pre-trade check PASSED, as the risk job would (approval requires it)."""
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE orders SET risk_status = 'PASSED' WHERE id = :id"), {"id": order_id}
        )


async def make_maker(engine: AsyncEngine, order_id: int, user_id: int) -> None:
    """Make `user_id` the maker of an order after the fact, as if they had submitted it (by
    their own key, say): drift the database refuses (migration 0011), so arranged past its
    triggers, in this one transaction of the owner's."""
    async with engine.begin() as conn:
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(
            text("UPDATE orders SET created_by = :me, created_by_key_id = NULL WHERE id = :id"),
            {"me": user_id, "id": order_id},
        )


@asynccontextmanager
async def database_trigger(
    engine: AsyncEngine, name: str, fires: str, body: str
) -> AsyncIterator[None]:
    """While open, a PL/pgSQL trigger `name` on orders, firing `fires` (as "BEFORE UPDATE"
    and what follows, FOR EACH ROW) with `body` (its statements, then RETURN NEW): a rule of
    the database's that the service does not know (drift), as a trigger of an operator's
    would. Installed by the migration owner, dropped on leaving: the tables are emptied
    between tests, the schema is not."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS"
                f" $$ BEGIN {body} RETURN NEW; END $$"
            )
        )
        await conn.execute(text(f"CREATE TRIGGER {name} {fires} EXECUTE FUNCTION {name}()"))
    try:
        yield
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TRIGGER {name} ON orders"))
            await conn.execute(text(f"DROP FUNCTION {name}()"))


def database_refusing_cancel(
    engine: AsyncEngine, refusals: Mapping[int, str]
) -> AbstractAsyncContextManager[None]:
    """While open, the database refuses to cancel each order of `refusals` by its PL/pgSQL
    statement (a RAISE)."""
    checks = " ".join(
        f"IF NEW.id = {int(order_id)} THEN {statement}; END IF;"
        for order_id, statement in refusals.items()
    )
    fires = (
        "BEFORE UPDATE ON orders FOR EACH ROW"
        " WHEN (NEW.status = 'CANCELLED' AND OLD.status <> 'CANCELLED')"
    )
    return database_trigger(engine, "test_refuse_cancel", fires, checks)


@asynccontextmanager
async def orders_locked(engine: AsyncEngine) -> AsyncIterator[Callable[[str], Awaitable[int]]]:
    """While open, another transaction holds orders in ACCESS EXCLUSIVE mode (rolled back on
    leaving). It gives how many statements naming `function` wait for a lock now."""
    async with engine.connect() as blocker:
        await blocker.execute(text("BEGIN"))
        await blocker.execute(text("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE"))

        async def waiting(function: str) -> int:
            found = await blocker.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE :pattern"
                ),
                {"pattern": f"%{function}%"},
            )
            return int(found.scalar_one())

        try:
            yield waiting
        finally:
            await blocker.execute(text("ROLLBACK"))


async def installed_source(engine: AsyncEngine, function: str) -> str:
    """The body of the database function `function` as installed: what a test holds equal to
    the statements the code writes for it."""
    async with engine.connect() as conn:
        source = await conn.scalar(
            text("SELECT prosrc FROM pg_proc WHERE proname = :name"), {"name": function}
        )
    assert source is not None, f"no function {function}"
    return str(source)


async def row_counts(engine: AsyncEngine, tables: Iterable[str]) -> dict[str, int]:
    """How many rows each of `tables` holds: what a request that writes nothing leaves equal."""
    async with engine.connect() as conn:
        return {
            table: (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
            for table in tables
        }


def keyed_intake_in_a_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /orders with an Idempotency-Key as before migration 0038, in a transaction: the
    one statement declines it. The reference the one statement is held equal to."""

    async def declined(*args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr(orders_router, "_submit_once_in_one_statement", declined)


def keyed_writes_in_a_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decisions and amendments with an Idempotency-Key as before migration 0043, in a
    transaction: the one statement declines every key. The reference it is held equal to."""

    async def declined(*args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr(orders_router, "_keyed_in_one_statement", declined)


def fills_in_a_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /orders/{id}/executions as before migration 0039, in a transaction: the one
    statement takes no order id, so it declines every fill. The reference it is held
    equal to."""
    monkeypatch.setattr(executions_router, "row_id", lambda text: None)


async def caller_left_on_the_one_connection(app: Any) -> None:
    """Nothing of the last caller stays on the app's one pooled connection (an app of
    `one_connection_app`): not the application role, no context."""
    async with app.state.db.acquire() as driver:
        left = await driver.fetchrow(
            "SELECT current_user = $1 AS app_role, current_setting('tradeops.user_id', true)"
            " AS user_id, current_setting('tradeops.desk_ids', true) AS desk_ids",
            APP_ROLE,
        )
    assert left["app_role"] is False
    assert not left["user_id"] and not left["desk_ids"], dict(left)


async def submitted_order(
    client: Any, cast: Cast, maker: str = "trader", **changes: Any
) -> dict[str, Any]:
    """The seed order (with `changes`) submitted by `maker`: the new order's document."""
    created = await client.post(
        "/api/v1/orders", json={**SEED_ORDER, **changes}, headers=cast[maker]
    )
    assert created.status_code == 201, created.text
    return dict(created.json())


async def reviewed_order(
    client: Any, cast: Cast, engine: AsyncEngine, maker: str = "trader", **changes: Any
) -> int:
    """An order ready for a checker's decision: the seed order (with `changes`) submitted by
    `maker`, reviewed by a trader of its desk (EQ-US, or FI-EU for trader_fi), its risk check
    passed."""
    order_id = int((await submitted_order(client, cast, maker, **changes))["id"])
    reviewer = "trader_fi" if maker.endswith("_fi") else "trader2"
    reviewed = await client.post(f"/api/v1/orders/{order_id}/review", headers=cast[reviewer])
    assert reviewed.status_code == 200, reviewed.text
    await pass_risk_check(engine, order_id)
    return order_id


async def approved_order(
    client: Any, cast: Cast, engine: AsyncEngine, maker: str = "trader", **changes: Any
) -> int:
    """An order through the whole maker-checker flow, APPROVED and ready for fills: a
    reviewed_order, approved by the approver of its desk."""
    order_id = await reviewed_order(client, cast, engine, maker, **changes)
    approver = "approver_fi" if maker.endswith("_fi") else "approver"
    approved = await client.post(f"/api/v1/orders/{order_id}/approve", headers=cast[approver])
    assert approved.status_code == 200, approved.text
    return order_id
