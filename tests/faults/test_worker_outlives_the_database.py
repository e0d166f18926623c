"""A job worker outlives its database: PostgreSQL down for longer than a heartbeat.

procrastinate stops a worker whose heartbeat (or job fetch) fails; `tradeops worker` starts
it again until it is asked to stop, so a restarted database never leaves the bank without a
worker (and its orders without their risk checks) until somebody notices.
"""

from __future__ import annotations

import time
import uuid

import httpx
import psycopg
import pytest

from tests.faults.conftest import Stack

pytestmark = pytest.mark.faults

DOWN_SECONDS = 12.0  # more than two heartbeats (5 s): the worker's own run must fail
CHECKED_WITHIN = 60.0


def _risk_status(stack: Stack, order_id: int) -> str:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT risk_status FROM orders WHERE id = %s", (order_id,)).fetchone()
    assert row is not None
    return str(row[0])


def _submit(stack: Stack) -> int:
    body = {"client_id": "CUST-1001", "symbol": "AAPL", "side": "BUY", "quantity": "3"}
    body |= {"price": "190.00"}
    headers = stack.headers(stack.trader) | {"Idempotency-Key": str(uuid.uuid4())}
    deadline = time.monotonic() + 30
    while True:  # the API answers 503 until its pool reconnects
        response = httpx.post(f"{stack.base_url}/api/v1/orders", json=body, headers=headers)
        if response.status_code == 201 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def test_the_worker_starts_itself_again_after_the_database_was_down(stack: Stack) -> None:
    assert stack.worker.alive()
    worker_pid = stack.worker.pid
    stack.pg.kill_postmaster()
    time.sleep(DOWN_SECONDS)
    stack.pg.start()
    stack.pg.wait_accepting()

    order_id = _submit(stack)
    deadline = time.monotonic() + CHECKED_WITHIN
    while _risk_status(stack, order_id) == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.5)

    print(f"\nworker log:\n{stack.worker.tail(15)}")
    assert stack.worker.alive() and stack.worker.pid == worker_pid, "the worker exited"
    assert _risk_status(stack, order_id) != "PENDING", "no risk check after the restart"
    assert "starting again" in stack.worker.log.read_text(errors="replace")
