"""Background jobs: deferred in the transaction of the change that causes them, run by the
worker, and never failing silently."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from procrastinate.jobs import Job
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import SEED_ORDER, Cast
from tradeops.auth.principal import Principal, Role
from tradeops.db.pool import PoolTimeout
from tradeops.db.uow import transaction, unit_of_work
from tradeops.jobs.app import run_worker
from tradeops.jobs.defer import CHECK_ORDER_RISK, RISK_QUEUE, defer_job
from tradeops.jobs.tasks import RETRY
from tradeops.orders.schemas import OrderCreate
from tradeops.orders.service import submit_order

ORDERS = "/api/v1/orders"


class Rollback(Exception):
    pass


async def jobs(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT id, task_name, queue_name, args, status::text AS status, attempts, lock"
                " FROM procrastinate_jobs ORDER BY id"
            )
        )
        return list(result.all())


async def trader(owner_engine: AsyncEngine, cast: Cast) -> Principal:
    async with owner_engine.connect() as conn:
        desk = await conn.scalar(text("SELECT id FROM desks WHERE code = 'EQ-US'"))
    return Principal(cast.ids["trader"], "trader@test.bank", Role.TRADER, frozenset({desk}))


async def test_a_committed_order_has_exactly_one_risk_check_job(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    response = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    assert response.status_code == 201, response.text
    order_id = response.json()["id"]

    [job] = await jobs(owner_engine)
    assert (job.task_name, job.queue_name, job.status) == (CHECK_ORDER_RISK, RISK_QUEUE, "todo")
    assert job.args == {"order_id": order_id}
    assert job.lock == f"order:{order_id}"


async def test_a_refused_or_retried_order_defers_nothing(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    body = {**SEED_ORDER, "client_order_id": "DUP-1"}
    assert (await client.post(ORDERS, json=body, headers=cast["trader"])).status_code == 201
    retried = await client.post(ORDERS, json=body, headers=cast["trader"])
    assert retried.status_code == 200, retried.text
    again = await client.post(ORDERS, json={**body, "quantity": 7}, headers=cast["trader"])
    assert again.status_code == 409, again.text
    # Refused by a rule the order's statement checks (its INSERT inserts nothing): no job either.
    unknown = await client.post(
        ORDERS, json={**SEED_ORDER, "symbol": "NOPE"}, headers=cast["trader"]
    )
    assert unknown.status_code == 422, unknown.text
    assert len(await jobs(owner_engine)) == 1


async def test_a_replacement_gets_the_risk_check_an_intake_does_and_a_refused_one_none(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """The job is deferred in the replacement's own statement, as in the order's at intake."""
    body = {**SEED_ORDER, "client_order_id": "R-1"}
    old = (await client.post(ORDERS, json=body, headers=cast["trader"])).json()
    other = (await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])).json()
    taken = await client.patch(
        f"{ORDERS}/{other['id']}", json={"client_order_id": "R-1"}, headers=cast["trader"]
    )
    assert taken.status_code == 409, taken.text
    assert len(await jobs(owner_engine)) == 2
    amended = await client.patch(
        f"{ORDERS}/{old['id']}", json={"quantity": "60"}, headers=cast["trader"]
    )
    assert amended.status_code == 201, amended.text
    new_id = amended.json()["id"]
    *_, job = await jobs(owner_engine)
    assert (job.task_name, job.queue_name, job.status) == (CHECK_ORDER_RISK, RISK_QUEUE, "todo")
    assert (job.args, job.lock) == ({"order_id": new_id}, f"order:{new_id}")


async def test_a_rolled_back_order_leaves_no_job(
    app: FastAPI, cast: Cast, owner_engine: AsyncEngine
) -> None:
    principal = await trader(owner_engine, cast)
    with pytest.raises(Rollback):
        async with unit_of_work(app.state.db, principal) as uow:
            created = await submit_order(uow, principal, OrderCreate.model_validate(SEED_ORDER))
            assert created.order.id is not None
            raise Rollback  # the request fails after the order (and its job) were written
    assert await jobs(owner_engine) == []
    async with owner_engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM orders")) == 0


async def test_defer_job_commits_and_rolls_back_with_its_transaction(
    app: FastAPI, owner_engine: AsyncEngine, database_url: str
) -> None:
    with pytest.raises(Rollback):
        async with transaction(app.state.db) as uow:
            await defer_job(uow, CHECK_ORDER_RISK, RISK_QUEUE, {"order_id": 1})
            raise Rollback
    assert await jobs(owner_engine) == []

    async with transaction(app.state.db) as uow:
        job_id = await defer_job(
            uow, CHECK_ORDER_RISK, RISK_QUEUE, {"order_id": 2}, queueing_lock="q-2"
        )
    [job] = await jobs(owner_engine)
    assert (job.id, job.args, job.status) == (job_id, {"order_id": 2}, "todo")


async def test_the_worker_runs_the_risk_check_to_success(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, database_url: str
) -> None:
    response = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    assert response.status_code == 201, response.text

    await run_worker(database_url, wait=False, install_signal_handlers=False)

    [job] = await jobs(owner_engine)
    assert (job.status, job.attempts) == ("succeeded", 1)


async def test_a_failing_job_is_failed_and_logged_never_silent(
    app: FastAPI, owner_engine: AsyncEngine, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with transaction(app.state.db) as uow:
        await defer_job(uow, CHECK_ORDER_RISK, RISK_QUEUE, {"wrong_argument": 1})

    await run_worker(database_url, wait=False, install_signal_handlers=False)

    [job] = await jobs(owner_engine)
    assert job.status == "failed"  # a TypeError is not transient: no retry
    logged = capsys.readouterr().out
    assert "job_failed" in logged and "TypeError" in logged and "will_retry" in logged


def test_a_busy_pool_or_a_lost_connection_is_retried_a_bug_is_not() -> None:
    first_attempt = Job(id=1, queue="risk", lock=None, queueing_lock=None, task_name="t")
    transient = [PoolTimeout("busy"), asyncpg.TooManyConnectionsError(), ConnectionResetError()]
    for error in transient:
        assert RETRY.get_retry_decision(exception=error, job=first_attempt) is not None, error
    assert RETRY.get_retry_decision(exception=TypeError("bug"), job=first_attempt) is None
