"""tradeops behind PgBouncer in transaction mode, Debian's package in front of a cluster of
our own (`make pgbouncer` installs it when missing; without it this module is skipped).

Two set-ups, each its own cluster and pooler:

- `before-1.21`: `max_prepared_statements` unset (PgBouncer < 1.21 cannot do otherwise) and
  TRADEOPS_DB_PREPARED_STATEMENTS=false;
- `1.21+`: `max_prepared_statements = 100` and prepared statements on, on the oldest
  PgBouncer >= 1.21 at hand (`make pgbouncer-new` builds Debian 13's source against Debian
  12's libraries into .tools/; skipped when there is none).

The pre-1.21 set-up runs on the oldest PgBouncer at hand (Debian 12's 1.18).

Migrations, `demo load`, `api-keys create`, `tradeops serve` and `tradeops worker` all reach
the database through the pooler; only the worker's LISTEN goes direct
(TRADEOPS_WORKER_LISTEN_DATABASE_URL). Checked: concurrent submit → review → approve flows
with no error response, no failed job and no prepared-statement error anywhere; risk checks
as fast as without a pooler; the statement timeout still cancels a stuck request (504); a
worker with LISTEN off polls. Figures: .tradeops/faults/pgbouncer-<set-up>.json.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.faults.cluster import (
    LocalPostgres,
    PgBouncer,
    Process,
    free_port,
    pgbouncer_binary,
    pgbouncer_version,
)
from tests.faults.conftest import AGENT_SCOPES, FIGURES_DIR, PASSWORD, _token, _wait_ready
from tests.integration.test_transaction_limits import Limits
from tradeops.auth.keys import hash_key, parse_key
from tradeops.db.embedded import ensure_database
from tradeops.db.pool import Database
from tradeops.db.uow import APP_ROLE, one_statement, transaction
from tradeops.orders.repository import READ_ORDER
from tradeops.settings import Settings

pytestmark = pytest.mark.faults

# (max_prepared_statements in the ini, TRADEOPS_DB_PREPARED_STATEMENTS)
SETUPS = {"before-1.21": (0, False), "1.21+": (100, True)}
STATEMENT_TIMEOUT_MS = 2000
ORDERS = 200
CLIENTS = 16
RISK_P95_BOUND = 2.0  # seconds from submission to the check's result, LISTEN direct
POLL_SECONDS = 1.0
SPACED_ORDERS = 20


@dataclass
class Bounced:
    setup: str
    pg: LocalPostgres
    bouncer: PgBouncer
    direct_url: str
    bounced_url: str
    env: dict[str, str]
    api: Process
    worker: Process
    base_url: str
    trader: dict[str, str]
    approver: dict[str, str]
    agent: dict[str, str]
    workdir: Path

    @property
    def settings(self) -> Settings:
        """The served settings, for a pool of the test's own through the pooler."""
        return Settings(
            env="test",
            statement_timeout_ms=STATEMENT_TIMEOUT_MS,
            db_prepared_statements=self.env["TRADEOPS_DB_PREPARED_STATEMENTS"] == "true",
            _env_file=None,  # type: ignore[call-arg]
        )


def tradeops(args: list[str], env: dict[str, str]) -> str:
    """Run a `tradeops` command to its end; its output (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-m", "tradeops.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"tradeops {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def _skip_unless_available(setup: str) -> Path:
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed: `make pgbouncer` (apt-get install pgbouncer)")
    binary = pgbouncer_binary(at_least=(1, 21) if SETUPS[setup][0] else (0, 0))
    if binary is None:
        pytest.skip("no PgBouncer >= 1.21 (max_prepared_statements): `make pgbouncer-new`")
    return binary


@pytest.fixture(scope="module", params=list(SETUPS))
def bounced(request: pytest.FixtureRequest) -> Iterator[Bounced]:
    setup: str = request.param
    binary = _skip_unless_available(setup)
    max_prepared, prepared = SETUPS[setup]
    workdir = Path(tempfile.mkdtemp(prefix="tradeops-pgbouncer-"))
    pg = LocalPostgres(workdir / "pg")
    bouncer = PgBouncer(workdir / "pgbouncer", binary, pg.port, max_prepared)
    processes: list[Process] = []
    try:
        pg.init()
        pg.start()
        pg.wait_accepting()
        bouncer.start()
        direct = ensure_database(pg.url(), "tradeops")
        env = {
            **os.environ,
            "TRADEOPS_DATABASE_URL": bouncer.url("tradeops"),
            "TRADEOPS_DB_PREPARED_STATEMENTS": str(prepared).lower(),
            "TRADEOPS_WORKER_LISTEN_DATABASE_URL": direct,
            "TRADEOPS_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS),
            "TRADEOPS_DEMO_PASSWORD": PASSWORD,
            "TRADEOPS_ENV": "test",
            "TRADEOPS_HOME": str(workdir / "home"),
            "TRADEOPS_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
        tradeops(["db", "upgrade"], env)
        tradeops(["demo", "load"], env)
        create_key = ["api-keys", "create", "--user", "agent@demo.test", "--name", "pgbouncer"]
        key = tradeops([*create_key, "--scopes", AGENT_SCOPES], env).strip().splitlines()[-1]
        port = free_port()
        api = Process(["serve", "--port", str(port)], env, workdir / "api.log")
        worker = Process(["worker", "--concurrency", "4"], env, workdir / "worker.log")
        processes += [api, worker]
        api.start()
        worker.start()
        base_url = f"http://127.0.0.1:{port}"
        _wait_ready(base_url, api)
        yield Bounced(
            setup=setup,
            pg=pg,
            bouncer=bouncer,
            direct_url=direct,
            bounced_url=bouncer.url("tradeops"),
            env=env,
            api=api,
            worker=worker,
            base_url=base_url,
            trader=bearer(_token(base_url, "trader@demo.test")),
            approver=bearer(_token(base_url, "approver@demo.test")),
            agent=bearer(key),
            workdir=workdir,
        )
    finally:
        for process in reversed(processes):
            process.stop()
        bouncer.stop()
        pg.stop()
        if os.environ.get("TRADEOPS_FAULTS_KEEP"):
            print(f"pgbouncer test files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --- what the logs say -------------------------------------------------------------------


@dataclass
class LogMarks:
    """Where each log ended when a test began: its figures count only what came after."""

    offsets: dict[Path, int] = field(default_factory=dict)

    @classmethod
    def of(cls, *logs: Path) -> LogMarks:
        return cls({log: log.stat().st_size if log.exists() else 0 for log in logs})

    def since(self, log: Path) -> list[str]:
        with log.open("rb") as text:
            text.seek(self.offsets.get(log, 0))
            return text.read().decode(errors="replace").splitlines()


def logs_of(bounced: Bounced) -> tuple[Path, ...]:
    return (bounced.pg.log, bounced.bouncer.log, bounced.api.log, bounced.worker.log)


def log_errors(bounced: Bounced, marks: LogMarks) -> dict[str, list[str]]:
    """Error lines of PostgreSQL, PgBouncer, the API and the worker since `marks`."""
    pg = [line for line in marks.since(bounced.pg.log) if "ERROR:" in line or "FATAL:" in line]
    bouncer = [
        line for line in marks.since(bounced.bouncer.log) if " ERROR " in line or "FATAL" in line
    ]

    def app_errors(log: Path) -> list[str]:
        return [
            line[:400]
            for line in marks.since(log)
            if '"level": "error"' in line or '"job_failed"' in line or "Traceback" in line
        ]

    return {
        "postgres": pg,
        "pgbouncer": bouncer,
        "api": app_errors(bounced.api.log),
        "worker": app_errors(bounced.worker.log),
    }


def prepared_statement_errors(errors: dict[str, list[str]]) -> int:
    """The issue's failures: a statement name missing, taken, or another client's."""
    words = ("prepared statement", "bind message supplies", "_pg3_", "__asyncpg_stmt_")
    return sum(1 for lines in errors.values() for line in lines if any(w in line for w in words))


def report(bounced: Bounced, name: str, figures: dict[str, Any]) -> None:
    version = ".".join(map(str, pgbouncer_version(bounced.bouncer.binary)))
    figures = {"setup": bounced.setup, "pgbouncer": version, **figures}
    figures["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    path = FIGURES_DIR / f"pgbouncer-{bounced.setup}.json"
    recorded = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**recorded, name: figures}, indent=2) + "\n")
    print(f"\n=== behind PgBouncer ({bounced.setup}): {name} ===")
    for key, value in figures.items():
        print(f"{key:<32}  {value}")


# --- risk check latency, read from the database -------------------------------------------


def last_order_id(bounced: Bounced) -> int:
    with psycopg.connect(bounced.direct_url) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM orders").fetchone()
    return int(row[0]) if row else 0


def risk_latencies(bounced: Bounced, after_id: int) -> list[float]:
    """Seconds from each order's submission to its risk check's result, orders past `after_id`.

    Both times are the server's: the order's created_at and the RISK_CHECKED event's `at`."""
    with psycopg.connect(bounced.direct_url) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM e.at - o.created_at) FROM orders o"
            " JOIN order_events e ON e.order_id = o.id AND e.type = 'RISK_CHECKED'"
            " WHERE o.id > %s",
            (after_id,),
        ).fetchall()
    return sorted(float(row[0]) for row in rows)


def latency_figures(latencies: list[float]) -> dict[str, Any]:
    if not latencies:
        return {"checked": 0}
    p95 = latencies[max(0, round(0.95 * len(latencies)) - 1)]
    return {
        "checked": len(latencies),
        "risk_check_median_s": round(statistics.median(latencies), 3),
        "risk_check_p95_s": round(p95, 3),
        "risk_check_max_s": round(latencies[-1], 3),
    }


async def wait_checked(bounced: Bounced, after_id: int, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while len(risk_latencies(bounced, after_id)) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


# --- the flows ----------------------------------------------------------------------------

ORDER = {"client_id": "CUST-1001", "symbol": "AAPL", "side": "BUY", "price": "190.00"}


@dataclass
class Flows:
    statuses: Counter[str] = field(default_factory=Counter)  # "step status" → count
    unexpected: list[str] = field(default_factory=list)
    approved: int = 0

    def expect(self, step: str, response: httpx.Response, status: int) -> bool:
        self.statuses[f"{step} {response.status_code}"] += 1
        if response.status_code != status:
            self.unexpected.append(f"{step} {response.status_code} {response.text[:300]}")
            return False
        return True


async def risk_result(http: httpx.AsyncClient, order_id: int, headers: dict[str, str]) -> str:
    """Poll the order until its risk check is done (at most 30 s); its risk status."""
    deadline = time.monotonic() + 30
    while True:
        answer = await http.get(f"/api/v1/orders/{order_id}", headers=headers)
        if answer.status_code != 200:
            return f"unknown: GET answered {answer.status_code} {answer.text[:200]}"
        status = str(answer.json().get("risk_status"))
        if status != "PENDING" or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.02)


async def one_flow(http: httpx.AsyncClient, bounced: Bounced, flows: Flows, quantity: int) -> None:
    """Submit (the trader or the agent), check, review (the other one), approve (approver)."""
    maker, reviewer = (
        (bounced.trader, bounced.agent) if quantity % 2 else (bounced.agent, bounced.trader)
    )
    created = await http.post(
        "/api/v1/orders", json={**ORDER, "quantity": str(quantity)}, headers=maker
    )
    if not flows.expect("submit", created, 201):
        return
    order_id = int(created.json()["id"])
    risk = await risk_result(http, order_id, maker)
    if risk != "PASSED":
        flows.unexpected.append(f"order {order_id}: risk {risk}")
        return
    review = await http.post(f"/api/v1/orders/{order_id}/review", headers=reviewer)
    if not flows.expect("review", review, 200):
        return
    approve = await http.post(f"/api/v1/orders/{order_id}/approve", headers=bounced.approver)
    if flows.expect("approve", approve, 200):
        flows.approved += 1


async def run_flows(bounced: Bounced, orders: int, clients: int) -> Flows:
    flows = Flows()
    quantities = itertools.count(1)
    limits = httpx.Limits(max_connections=clients * 2)
    async with httpx.AsyncClient(base_url=bounced.base_url, timeout=60, limits=limits) as http:

        async def client() -> None:
            while (quantity := next(quantities)) <= orders:
                await one_flow(http, bounced, flows, quantity)

        await asyncio.gather(*(client() for _ in range(clients)))
    return flows


def failed_jobs(bounced: Bounced) -> int:
    with psycopg.connect(bounced.direct_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'failed'"
        ).fetchone()
    return int(row[0]) if row else 0


async def test_concurrent_order_flows_through_pgbouncer_have_no_error(bounced: Bounced) -> None:
    marks = LogMarks.of(*logs_of(bounced))
    first = last_order_id(bounced)
    started = time.monotonic()
    flows = await run_flows(bounced, ORDERS, CLIENTS)
    took = time.monotonic() - started
    await wait_checked(bounced, first, ORDERS, within=30)
    errors = log_errors(bounced, marks)
    figures = {
        "orders": ORDERS,
        "clients": CLIENTS,
        "seconds": round(took, 1),
        "responses": dict(sorted(flows.statuses.items())),
        "approved": flows.approved,
        "unexpected_responses": len(flows.unexpected),
        "failed_jobs": failed_jobs(bounced),
        "prepared_statement_errors": prepared_statement_errors(errors),
        "log_errors": {name: len(lines) for name, lines in errors.items()},
        "worker_listens_on": "direct URL",
        **latency_figures(risk_latencies(bounced, first)),
    }
    report(bounced, "flows", figures)

    assert not flows.unexpected, "\n".join(flows.unexpected[:20])
    assert flows.approved == ORDERS
    assert figures["failed_jobs"] == 0
    assert not any(errors.values()), json.dumps(errors, indent=1)[:5000]
    assert bounced.worker.alive() and bounced.api.alive()
    assert figures["risk_check_p95_s"] <= RISK_P95_BOUND, figures


# --- time limits --------------------------------------------------------------------------


async def test_the_time_limits_hold_in_every_transaction_through_pgbouncer(
    bounced: Bounced,
) -> None:
    db = Database(bounced.settings, bounced.bounced_url)
    try:
        for _ in range(5):  # whichever server connection the pooler hands out
            async with transaction(db) as uow:
                row = await uow.row_of(
                    "SELECT current_setting('statement_timeout') AS statement_timeout,"
                    " current_setting('idle_in_transaction_session_timeout') AS idle_timeout",
                    Limits,
                )
                assert row == Limits("2s", "1min")
    finally:
        await db.dispose()


async def test_a_request_stuck_on_a_lock_gets_a_504_at_the_statement_timeout(
    bounced: Bounced,
) -> None:
    """The statement timeout is no longer a startup parameter the pooler could lose: a
    request waiting on a row lock is cancelled after STATEMENT_TIMEOUT_MS, a 504 problem."""
    async with httpx.AsyncClient(base_url=bounced.base_url, timeout=60) as http:
        created = await http.post(
            "/api/v1/orders", json={**ORDER, "quantity": "7"}, headers=bounced.trader
        )
        assert created.status_code == 201, created.text
        order_id = created.json()["id"]
        with psycopg.connect(bounced.direct_url) as locker:
            locker.execute("SELECT 1 FROM orders WHERE id = %s FOR UPDATE", (order_id,))
            started = time.monotonic()
            cancel = await http.post(f"/api/v1/orders/{order_id}/cancel", headers=bounced.trader)
            took = time.monotonic() - started
            locker.rollback()
    report(bounced, "statement_timeout", {"status": cancel.status_code, "seconds": round(took, 2)})
    assert cancel.status_code == 504, cancel.text
    assert cancel.headers["content-type"] == "application/problem+json"
    assert STATEMENT_TIMEOUT_MS / 1000 <= took < STATEMENT_TIMEOUT_MS / 1000 + 5


# --- a new connection's first read sent alone --------------------------------------------

FRESH_CONNECTIONS = 16


async def test_a_new_connections_first_read_sent_alone_is_not_held_up_by_type_lookups(
    bounced: Bounced,
) -> None:
    """GET /orders/{id} is one statement sent alone (db.uow.one_statement), answering
    composite values (migration 0019) whose types asyncpg looks up once per connection, in
    three statements: `jit` off, the look-up, `jit` back. Sent outside a transaction, a
    pooler in transaction mode gives each statement whichever server connection is free: the
    look-up ran with JIT on (2.9-3.7 s on this machine, past the 2 s limit: a 504) and
    `jit = off` stayed on another client's server connection. Every new connection does it
    at connect, in a transaction of its own, before its first read."""
    key = bounced.agent["Authorization"].removeprefix("Bearer ")
    credential = {"prefix": parse_key(key), "hash": hash_key(key), "user_id": None, "email": None}
    params = {**credential, "app_role": APP_ROLE, "request_id": "", "order_id": 1}
    settings = bounced.settings.model_copy(
        update={"pool_size": FRESH_CONNECTIONS, "pool_max_overflow": 0}
    )
    db = Database(settings, bounced.bounced_url)

    async def timed_read() -> float:
        started = time.monotonic()
        read = await one_statement(db, READ_ORDER, params)
        assert read is not None, "the API key names its principal"
        return time.monotonic() - started

    try:  # each read on a connection of its own, opened for it
        answers = await asyncio.gather(
            *(timed_read() for _ in range(FRESH_CONNECTIONS)), return_exceptions=True
        )
        opened = db.connections()
    finally:
        await db.dispose()
    failures = [repr(answer) for answer in answers if isinstance(answer, BaseException)]
    seconds = sorted(answer for answer in answers if isinstance(answer, float))
    jit = await jit_on_every_server_connection(bounced)
    figures = {
        "reads": FRESH_CONNECTIONS,
        "connections": sum(opened),
        "failed": len(failures),
        "slowest_s": round(seconds[-1], 3) if seconds else None,
        "server_connections_with_jit": dict(Counter(jit)),
    }
    report(bounced, "first_reads_on_new_connections", figures)
    assert not failures, failures[:3]
    assert sum(opened) == FRESH_CONNECTIONS
    assert set(jit) == {"on"}, "a session setting was left on a server connection others share"


@dataclass(frozen=True)
class Jit:
    jit: str


async def jit_on_every_server_connection(bounced: Bounced) -> list[str]:
    """`jit` as each of the pooler's server connections has it: as many transactions held
    at once as the pool has server connections (default_pool_size = 20), each reading it."""
    held = 20
    settings = bounced.settings.model_copy(update={"pool_size": held, "pool_max_overflow": 0})
    db = Database(settings, bounced.bounced_url)
    all_in = asyncio.Barrier(held)

    async def read_jit() -> str:
        async with transaction(db) as uow:
            row = await uow.row_of("SELECT current_setting('jit') AS jit", Jit)
            await asyncio.wait_for(all_in.wait(), timeout=30)
            return row.jit if row else "?"

    try:
        return list(await asyncio.gather(*(read_jit() for _ in range(held))))
    finally:
        await db.dispose()


# --- how soon a check starts: LISTEN direct, or polling ------------------------------------


async def submit_spaced(bounced: Bounced, count: int) -> None:
    """`count` orders, one every 0.25 s: each check's wait shows, not a backlog's."""
    async with httpx.AsyncClient(base_url=bounced.base_url, timeout=60) as http:
        for quantity in range(1000, 1000 + count):
            created = await http.post(
                "/api/v1/orders", json={**ORDER, "quantity": str(quantity)}, headers=bounced.trader
            )
            assert created.status_code == 201, created.text
            await asyncio.sleep(0.25)


async def spaced_latencies(bounced: Bounced) -> list[float]:
    first = last_order_id(bounced)
    await submit_spaced(bounced, SPACED_ORDERS)
    await wait_checked(bounced, first, SPACED_ORDERS, within=30)
    return risk_latencies(bounced, first)


async def test_a_worker_listening_direct_hears_of_each_order_at_once(bounced: Bounced) -> None:
    """The API's NOTIFY (at the order's commit, through the pooler) reaches the worker's
    LISTEN on TRADEOPS_WORKER_LISTEN_DATABASE_URL: no check waits for a poll (5 s)."""
    latencies = await spaced_latencies(bounced)
    figures = {"worker_listens_on": "direct URL", **latency_figures(latencies)}
    report(bounced, "listening_worker", figures)
    assert len(latencies) == SPACED_ORDERS
    assert latencies[-1] <= RISK_P95_BOUND, figures


async def test_a_worker_without_listen_polls_at_its_interval(bounced: Bounced) -> None:
    """Behind a pooler with no direct URL: TRADEOPS_WORKER_LISTEN=false and a short poll."""
    env = {
        **bounced.env,
        "TRADEOPS_WORKER_LISTEN": "false",
        "TRADEOPS_WORKER_POLL_SECONDS": str(POLL_SECONDS),
    }
    env.pop("TRADEOPS_WORKER_LISTEN_DATABASE_URL")
    bounced.worker.stop()
    polling = Process(["worker", "--concurrency", "4"], env, bounced.workdir / "polling.log")
    polling.start()
    try:
        await asyncio.sleep(3)  # started, and past its first look at the queue
        latencies = await spaced_latencies(bounced)
    finally:
        polling.stop()
        bounced.worker.start()
    figures = {"poll_seconds": POLL_SECONDS, **latency_figures(latencies)}
    report(bounced, "polling_worker", figures)
    assert len(latencies) == SPACED_ORDERS
    assert latencies[-1] <= POLL_SECONDS + RISK_P95_BOUND, figures
