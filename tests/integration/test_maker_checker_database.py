"""Maker-checker's database twin: every writer, not only orders/workflow.py, is refused an
approval of an order that is not REVIEWED, whose risk check has not PASSED, or by its maker
(or the maker's key owner), and a rejection by its maker. Direct SQL, as the application
role in a request context and as the migration owner (triggers bind a table's owner too)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import Cast, make_api_key
from tradeops.audit import recording as audit
from tradeops.auth.principal import Principal, Role
from tradeops.db.errors import constraint_of, problem_for
from tradeops.db.prepared import Id
from tradeops.db.uow import UnitOfWork, sqlstate_of, unit_of_work
from tradeops.orders import workflow

MAKER_CHECKER = "orders_maker_checker"

# Written as the owner, past every service: the order a test needs, in the state it needs.
NEW_ORDER = text(
    "INSERT INTO orders (desk_id, client_id, instrument_id, side, order_type, quantity, price,"
    " currency, created_by, created_by_key_id)"
    " SELECT c.desk_id, c.id, i.id, 'BUY', 'LIMIT', 10, 1.5, 'USD', :maker, :key"
    " FROM clients c, instruments i WHERE c.external_id = 'CUST-1001' AND i.symbol = 'AAPL'"
    " RETURNING id"
)
ARRANGE = text("UPDATE orders SET status = :status, risk_status = :risk WHERE id = :id")
APPROVE = text(
    "UPDATE orders SET status = 'APPROVED', approved_by = :by, version = version + 1"
    " WHERE id = :id RETURNING id"
)
# An approval as the database wants it (migration 0016): the approver's order_approvals row,
# then the order's move to APPROVED, whose trigger counts that row.
GIVE_AND_APPROVE = text(
    "WITH given AS (INSERT INTO order_approvals (order_id, desk_id, approved_by)"
    " SELECT id, desk_id, :by FROM orders WHERE id = :id RETURNING order_id)"
    " UPDATE orders SET status = 'APPROVED', approved_by = :by, version = version + 1"
    " FROM given WHERE orders.id = given.order_id RETURNING id"
)
REJECT = text(
    "UPDATE orders SET status = 'REJECTED', rejected_by = :by, version = version + 1"
    " WHERE id = :id RETURNING id"
)


async def make_order(
    owner: AsyncEngine,
    maker: int,
    *,
    status: str = "REVIEWED",
    risk: str = "PASSED",
    key: int | None = None,
) -> int:
    async with owner.begin() as conn:
        order_id = int(await conn.scalar(NEW_ORDER, {"maker": maker, "key": key}))
        if (status, risk) != ("PENDING", "PENDING"):
            await conn.execute(ARRANGE, {"status": status, "risk": risk, "id": order_id})
    return order_id


def person(cast: Cast, who: str, role: Role, key: int | None = None) -> Principal:
    desk = 1  # EQ-US, the first desk make_reference_data creates
    return Principal(
        user_id=cast.ids[who],
        email=f"{who}@test.bank",
        role=role,
        desk_ids=frozenset({desk}),
        api_key_id=key,
    )


@asynccontextmanager
async def acting(owner: AsyncEngine, principal: Principal) -> AsyncIterator[UnitOfWork]:
    """A transaction as tradeops_app with the principal's context, as every request has."""
    async with unit_of_work(owner, principal, "req-maker-checker") as uow:
        yield uow


async def refusal_of(owner: AsyncEngine, principal: Principal | None, *steps: Any) -> Exception:
    """The error the database raises for statements run as `principal` (None: the owner)."""
    with pytest.raises((asyncpg.PostgresError, DBAPIError)) as caught:
        if principal is None:
            async with owner.begin() as conn:
                for statement, params in steps:
                    await conn.execute(statement, params)
        else:
            async with acting(owner, principal) as uow:
                for statement, params in steps:
                    await uow.execute(statement, params)
    return caught.value


def assert_maker_checker(error: Exception) -> None:
    assert sqlstate_of(error) == "23514", error
    assert constraint_of(error) == MAKER_CHECKER, error
    problem = problem_for(error)
    assert problem.status == 409
    assert MAKER_CHECKER not in problem.detail, "no database message reaches a client"


async def status_of(owner: AsyncEngine, order_id: int) -> tuple[str, int | None, int | None]:
    async with owner.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT status, approved_by, rejected_by FROM orders WHERE id = :id"),
                {"id": order_id},
            )
        ).one()
    return row.status, row.approved_by, row.rejected_by


# --- as the application role, in a request context ------------------------------------------


async def test_an_approver_is_refused_approving_their_own_order(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    own = await make_order(owner_engine, cast.ids["approver"])
    approver = person(cast, "approver", Role.APPROVER)
    error = await refusal_of(owner_engine, approver, (APPROVE, {"by": approver.user_id, "id": own}))
    assert_maker_checker(error)
    error = await refusal_of(owner_engine, approver, (REJECT, {"by": approver.user_id, "id": own}))
    assert_maker_checker(error)
    assert await status_of(owner_engine, own) == ("REVIEWED", None, None)


@pytest.mark.parametrize(
    ("status", "risk"),
    [
        ("PENDING", "PASSED"),
        ("REVIEWED", "PENDING"),
        ("REVIEWED", "FAILED"),
        ("CANCELLED", "PASSED"),
    ],
)
async def test_approval_needs_a_reviewed_order_whose_risk_check_passed(
    cast: Cast, owner_engine: AsyncEngine, status: str, risk: str
) -> None:
    order_id = await make_order(owner_engine, cast.ids["trader"], status=status, risk=risk)
    approver = person(cast, "approver", Role.APPROVER)
    error = await refusal_of(
        owner_engine, approver, (APPROVE, {"by": approver.user_id, "id": order_id})
    )
    assert_maker_checker(error)


async def test_the_owner_of_the_makers_key_is_the_maker(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    key_id, _ = await make_api_key(owner_engine, "approver@test.bank", ["orders:read"])
    # An order cannot claim a key of someone other than its maker: the key acts as its owner.
    with pytest.raises(DBAPIError) as foreign_key:
        await make_order(owner_engine, cast.ids["trader"], key=key_id)
    assert sqlstate_of(foreign_key.value) == "23503"
    # So the owner of the key an order came through is its maker, and may not decide on it.
    through_key = await make_order(owner_engine, cast.ids["approver"], key=key_id)
    approver = person(cast, "approver", Role.APPROVER)
    error = await refusal_of(
        owner_engine, approver, (APPROVE, {"by": approver.user_id, "id": through_key})
    )
    assert_maker_checker(error)


async def test_a_maker_cannot_name_someone_else_as_the_approver(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await make_order(owner_engine, cast.ids["trader"])
    maker = person(cast, "trader", Role.TRADER)
    forged = (APPROVE, {"by": cast.ids["approver"], "id": order_id})
    assert_maker_checker(await refusal_of(owner_engine, maker, forged))
    # Nor first hand the order to someone else, then approve it as the new "maker"'s checker.
    handed_over = text("UPDATE orders SET created_by = :other WHERE id = :id")
    other = {"other": cast.ids["trader2"], "id": order_id}
    assert_maker_checker(await refusal_of(owner_engine, maker, (handed_over, other)))
    # Nor pass the risk check themselves.
    passed = text("UPDATE orders SET risk_status = 'PASSED' WHERE id = :id")
    pending = await make_order(owner_engine, cast.ids["trader"], status="PENDING", risk="PENDING")
    assert_maker_checker(await refusal_of(owner_engine, maker, (passed, {"id": pending})))
    assert await status_of(owner_engine, order_id) == ("REVIEWED", None, None)


async def test_no_key_decides_even_an_approvers(cast: Cast, owner_engine: AsyncEngine) -> None:
    key_id, _ = await make_api_key(owner_engine, "approver@test.bank", ["orders:read"])
    order_id = await make_order(owner_engine, cast.ids["trader"])
    through_key = person(cast, "approver", Role.APPROVER, key=key_id)
    error = await refusal_of(
        owner_engine, through_key, (APPROVE, {"by": through_key.user_id, "id": order_id})
    )
    assert_maker_checker(error)


async def test_an_order_is_born_undecided(cast: Cast, owner_engine: AsyncEngine) -> None:
    maker = person(cast, "trader", Role.TRADER)
    born_approved = text(
        "INSERT INTO orders (desk_id, client_id, instrument_id, side, order_type, quantity,"
        " price, currency, created_by, status, risk_status, approved_by)"
        " SELECT c.desk_id, c.id, i.id, 'BUY', 'LIMIT', 10, 1.5, 'USD', :maker, 'APPROVED',"
        " 'PASSED', :approver FROM clients c, instruments i"
        " WHERE c.external_id = 'CUST-1001' AND i.symbol = 'AAPL'"
    )
    params = {"maker": maker.user_id, "approver": cast.ids["approver"]}
    assert_maker_checker(await refusal_of(owner_engine, maker, (born_approved, params)))
    assert_maker_checker(await refusal_of(owner_engine, None, (born_approved, params)))


async def test_a_legitimate_approval_and_rejection_pass(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    approved = await make_order(owner_engine, cast.ids["trader"])
    rejected = await make_order(owner_engine, cast.ids["trader"])
    approver = person(cast, "approver", Role.APPROVER)
    async with acting(owner_engine, approver) as uow:
        assert await uow.row_of(GIVE_AND_APPROVE, Id, {"by": approver.user_id, "id": approved})
        assert await uow.row_of(REJECT, Id, {"by": approver.user_id, "id": rejected})
    me = approver.user_id
    assert await status_of(owner_engine, approved) == ("APPROVED", me, None)
    assert await status_of(owner_engine, rejected) == ("REJECTED", None, me)


# --- as the migration owner, without a context ----------------------------------------------


@pytest.mark.parametrize(
    ("status", "risk", "approver"),
    [
        ("REVIEWED", "PASSED", "trader"),  # the maker
        ("PENDING", "PASSED", "approver"),
        ("REVIEWED", "PENDING", "approver"),
        ("REVIEWED", "FAILED", "approver"),
        ("REVIEWED", "PASSED", None),  # nobody named
    ],
)
async def test_the_owner_is_bound_too(
    cast: Cast, owner_engine: AsyncEngine, status: str, risk: str, approver: str | None
) -> None:
    order_id = await make_order(owner_engine, cast.ids["trader"], status=status, risk=risk)
    by = cast.ids[approver] if approver else None
    assert_maker_checker(
        await refusal_of(owner_engine, None, (APPROVE, {"by": by, "id": order_id}))
    )
    assert await status_of(owner_engine, order_id) == (status, None, None)


async def test_the_owner_cannot_have_the_maker_reject_nor_the_makers_key_owner_decide(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await make_order(owner_engine, cast.ids["trader"])
    maker = {"by": cast.ids["trader"], "id": order_id}
    assert_maker_checker(await refusal_of(owner_engine, None, (REJECT, maker)))
    key_id, _ = await make_api_key(owner_engine, "approver@test.bank", ["orders:read"])
    through_key = await make_order(owner_engine, cast.ids["approver"], key=key_id)
    key_owner = {"by": cast.ids["approver"], "id": through_key}
    assert_maker_checker(await refusal_of(owner_engine, None, (GIVE_AND_APPROVE, key_owner)))
    assert_maker_checker(await refusal_of(owner_engine, None, (REJECT, key_owner)))
    assert await status_of(owner_engine, order_id) == ("REVIEWED", None, None)
    assert await status_of(owner_engine, through_key) == ("REVIEWED", None, None)


async def test_the_owner_may_approve_by_the_rules(cast: Cast, owner_engine: AsyncEngine) -> None:
    order_id = await make_order(owner_engine, cast.ids["trader"])
    async with owner_engine.begin() as conn:
        await conn.execute(GIVE_AND_APPROVE, {"by": cast.ids["approver"], "id": order_id})
    assert await status_of(owner_engine, order_id) == ("APPROVED", cast.ids["approver"], None)
    # And may not set an approver afterwards, or make the maker approver by other means.
    again = text("UPDATE orders SET approved_by = :by WHERE id = :id")
    error = await refusal_of(
        owner_engine, None, (again, {"by": cast.ids["trader2"], "id": order_id})
    )
    assert_maker_checker(error)


# --- through the API: drift between the Python rules and the database is a 409 --------------


async def test_a_refusal_by_the_database_is_a_409_problem(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As if workflow.py's rules had drifted (or raced): the database still refuses, and the
    client reads a 409 problem, not a 500 and not the database's message."""
    order_id = await make_order(owner_engine, cast.ids["trader"], status="PENDING")
    monkeypatch.setattr(workflow, "refusal", lambda *_: None)
    response = await client.post(f"/api/v1/orders/{order_id}/approve", headers=cast["approver"])
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("/maker-checker-refused")
    assert "orders_maker_checker" not in problem["detail"] and "PENDING" not in problem["detail"]
    assert await status_of(owner_engine, order_id) == ("PENDING", None, None)


async def test_the_api_records_who_rejected(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await make_order(owner_engine, cast.ids["trader"], status="PENDING")
    rejected = await client.post(
        f"/api/v1/orders/{order_id}/reject", json={"reason": "no"}, headers=cast["approver"]
    )
    assert rejected.status_code == 200, rejected.text
    assert await status_of(owner_engine, order_id) == ("REJECTED", None, cast.ids["approver"])


# --- audit events take their actor, key and request from the context ----------------------

BARE_EVENT = text(
    "INSERT INTO audit_events (stream, action, entity, entity_id)"
    " VALUES ('user:' || :id, :action, 'user', :id)"
)


async def recorded(owner: AsyncEngine, action: str) -> tuple[Any, ...]:
    """Actor, key and request of the event with this action, read as the owner."""
    async with owner.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT actor, api_key_id, request_id FROM audit_events WHERE action = :action"
                ),
                {"action": action},
            )
        ).one()
    return tuple(row)


async def test_audit_columns_default_from_the_context(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    trader = person(cast, "trader", Role.TRADER)
    async with acting(owner_engine, trader) as uow:
        await uow.execute(BARE_EVENT, {"id": str(trader.user_id), "action": "test.person"})
    assert await recorded(owner_engine, "test.person") == (
        f"user:{trader.user_id}",
        None,
        "req-maker-checker",
    )
    agent = person(cast, "agent", Role.AGENT, key=3)
    async with acting(owner_engine, agent) as uow:
        await uow.execute(BARE_EVENT, {"id": str(agent.user_id), "action": "test.key"})
    assert await recorded(owner_engine, "test.key") == (
        f"user:{agent.user_id}/key:3",
        3,
        "req-maker-checker",
    )
    # No context, no actor: a writer without one (sign-in, the owner) names its actor itself.
    with pytest.raises(DBAPIError) as anonymous:
        async with owner_engine.begin() as conn:
            await conn.execute(BARE_EVENT, {"id": "1", "action": "test.nobody"})
    assert sqlstate_of(anonymous.value) == "23502"


async def test_record_writes_the_contexts_actor(cast: Cast, owner_engine: AsyncEngine) -> None:
    agent = person(cast, "agent", Role.AGENT, key=5)
    async with acting(owner_engine, agent) as uow:
        await audit.record(uow, agent, "test.recorded", "user", agent.user_id)
    assert await recorded(owner_engine, "test.recorded") == (
        f"user:{agent.user_id}/key:5",
        5,
        "req-maker-checker",
    )
