"""Database twins of rules the services enforce: a direct writer as the application role, in
a trader's request context (row-level security on), is held to them too (migration 0018)."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import Cast
from tests.integration.test_maker_checker_database import (
    GIVE_AND_APPROVE,
    acting,
    assert_maker_checker,
    make_order,
    person,
    refusal_of,
)
from tradeops.auth.principal import Role
from tradeops.db.uow import sqlstate_of

ONE_APPROVAL_ASKED = text(
    "INSERT INTO orders (desk_id, client_id, instrument_id, side, order_type, quantity, price,"
    " currency, created_by, approvals_required)"
    " SELECT c.desk_id, c.id, i.id, 'BUY', 'LIMIT', 1000000, 150, 'USD', :maker, 1"
    " FROM clients c, instruments i WHERE c.external_id = 'CUST-1001' AND i.symbol = 'AAPL'"
    " RETURNING id"
)


async def test_an_order_needs_its_bands_approvals_whatever_the_writer_sends(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    async with owner_engine.begin() as conn:
        desk = (
            await conn.execute(text("SELECT desk_id FROM clients WHERE external_id='CUST-1001'"))
        ).scalar()
        await conn.execute(
            text(
                "INSERT INTO desk_approval_policies (desk_id, currency, updated_by)"
                " VALUES (:d, 'USD', :u) ON CONFLICT DO NOTHING"
            ),
            {"d": desk, "u": cast.ids["approver"]},
        )
        await conn.execute(text("DELETE FROM approval_bands WHERE desk_id = :d"), {"d": desk})
        await conn.execute(
            text("INSERT INTO approval_bands VALUES (:d, 0, 1), (:d, 1000, 3)"), {"d": desk}
        )
    trader = person(cast, "trader", Role.TRADER)
    async with acting(owner_engine, trader) as uow:
        await uow.execute(ONE_APPROVAL_ASKED, {"maker": trader.user_id})
    async with owner_engine.connect() as conn:
        required = await conn.scalar(
            text("SELECT approvals_required FROM orders ORDER BY id DESC LIMIT 1")
        )
    assert required == 3


async def test_no_request_changes_an_orders_expiry(cast: Cast, owner_engine: AsyncEngine) -> None:
    own = await make_order(owner_engine, cast.ids["trader"], status="PENDING", risk="PENDING")
    trader = person(cast, "trader", Role.TRADER)
    for change in (
        "expire_at = NULL",
        "expire_at = now() - interval '1 second'",
        "time_in_force = 'GTC'",
    ):
        forged = text(f"UPDATE orders SET {change} WHERE id = :id")
        assert_maker_checker(await refusal_of(owner_engine, trader, (forged, {"id": own})))
    async with owner_engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT time_in_force, expire_at FROM orders WHERE id = :id"), {"id": own}
            )
        ).one()
    assert row.time_in_force == "DAY" and row.expire_at is not None


POLICY_OF = text(
    "INSERT INTO desk_approval_policies (desk_id, currency, updated_by)"
    " SELECT id, 'USD', :by FROM desks WHERE code = :desk"
)


async def test_a_desks_approval_policy_is_set_by_a_person_who_sees_the_desk(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    """A risk officer of EQ-US only, or through a key, may not set a policy."""
    risk_of_eq_us = person(cast, "risk", Role.RISK)
    for principal, desk in (
        (risk_of_eq_us, "FI-EU"),
        (replace(risk_of_eq_us, api_key_id=1), "EQ-US"),
    ):
        forged = (POLICY_OF, {"by": principal.user_id, "desk": desk})
        assert sqlstate_of(await refusal_of(owner_engine, principal, forged)) == "42501"
    bands = text("INSERT INTO approval_bands SELECT id, 0, 5 FROM desks WHERE code = 'FI-EU'")
    error = await refusal_of(owner_engine, risk_of_eq_us, (bands, {}))
    assert sqlstate_of(error) == "42501"
    async with acting(owner_engine, risk_of_eq_us) as uow:
        await uow.execute(POLICY_OF, {"by": risk_of_eq_us.user_id, "desk": "EQ-US"})
        await uow.execute(
            text("INSERT INTO approval_bands SELECT id, 0, 1 FROM desks WHERE code = 'EQ-US'")
        )
    async with owner_engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM desk_approval_policies")) == 1


async def test_an_order_is_replaced_only_by_its_own_replacement_by_its_maker(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    victim = await make_order(owner_engine, cast.ids["trader"])
    unrelated = await make_order(
        owner_engine, cast.ids["trader2"], status="PENDING", risk="PENDING"
    )
    own_unrelated = await make_order(
        owner_engine, cast.ids["trader"], status="PENDING", risk="PENDING"
    )
    marked = text("UPDATE orders SET status = 'REPLACED', replaced_by = :by WHERE id = :id")
    for who, by in (("trader2", unrelated), ("trader", own_unrelated)):
        writer = person(cast, who, Role.TRADER)
        error = await refusal_of(owner_engine, writer, (marked, {"by": by, "id": victim}))
        assert_maker_checker(error)
    async with owner_engine.connect() as conn:
        status = await conn.scalar(text("SELECT status FROM orders WHERE id = :id"), {"id": victim})
    assert status == "REVIEWED"


async def test_a_filled_order_is_reopened_only_by_a_bust(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await make_order(owner_engine, cast.ids["trader"])
    async with owner_engine.begin() as conn:
        await conn.execute(GIVE_AND_APPROVE, {"by": cast.ids["approver"], "id": order_id})
        await conn.execute(
            text(
                "INSERT INTO executions (order_id, desk_id, quantity, price, venue, executed_at,"
                " external_id, recorded_by) SELECT id, desk_id, quantity, 1.5, 'XNAS', now(),"
                " 'fill-1', :by FROM orders WHERE id = :id"
            ),
            {"by": cast.ids["admin"], "id": order_id},
        )
        await conn.execute(
            text(
                "UPDATE orders SET status = 'FILLED', filled_quantity = quantity,"
                " avg_fill_price = 1.5 WHERE id = :id"
            ),
            {"id": order_id},
        )
    trader = person(cast, "trader", Role.TRADER)
    reopened = text(
        "UPDATE orders SET status = 'APPROVED', filled_quantity = 0, avg_fill_price = NULL"
        " WHERE id = :id"
    )
    assert_maker_checker(await refusal_of(owner_engine, trader, (reopened, {"id": order_id})))
    async with owner_engine.connect() as conn:
        status = await conn.scalar(
            text("SELECT status FROM orders WHERE id = :id"), {"id": order_id}
        )
    assert status == "FILLED"


async def test_no_request_appends_an_event_without_the_orders_change(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await make_order(owner_engine, cast.ids["trader"], status="PENDING", risk="PENDING")
    trader = person(cast, "trader", Role.TRADER)
    forged = text(
        "INSERT INTO order_events (order_id, desk_id, seq, type, payload)"
        " SELECT id, desk_id, version + 1, 'APPROVED', '{}' FROM orders WHERE id = :id"
    )
    assert_maker_checker(await refusal_of(owner_engine, trader, (forged, {"id": order_id})))
    async with owner_engine.connect() as conn:
        events = await conn.scalar(
            text("SELECT count(*) FROM order_events WHERE type = 'APPROVED'")
        )
        outbox = await conn.scalar(text("SELECT count(*) FROM webhook_deliveries"))
    assert (events, outbox) == (0, 0)


async def test_no_request_appends_an_event_the_order_did_not_become(
    cast: Cast, owner_engine: AsyncEngine
) -> None:
    """Migration 0020: bumping the version alone (no rule watches it) no longer lets a desk
    user append a step that never happened, nor its signed webhook."""
    order_id = await make_order(owner_engine, cast.ids["trader"], status="PENDING", risk="PENDING")
    trader = person(cast, "trader", Role.TRADER)
    for event, payload in (("APPROVED", "{}"), ("RISK_CHECKED", '{"risk_status": "FAILED"}')):
        forged = text(
            "WITH bumped AS (UPDATE orders SET version = version + 1 WHERE id = :id"
            "  RETURNING id, desk_id, version)"
            " INSERT INTO order_events (order_id, desk_id, seq, type, payload)"
            " SELECT id, desk_id, version, :event, CAST(:payload AS jsonb) FROM bumped"
        )
        params = {"id": order_id, "event": event, "payload": payload}
        assert_maker_checker(await refusal_of(owner_engine, trader, (forged, params)))
    async with owner_engine.connect() as conn:
        events = await conn.scalar(
            text("SELECT count(*) FROM order_events WHERE order_id = :id AND type <> 'CREATED'"),
            {"id": order_id},
        )
        outbox = await conn.scalar(text("SELECT count(*) FROM webhook_deliveries"))
    assert (events, outbox) == (0, 0)
