"""Read replicas on a real streaming pair: a primary of our own (initdb) and a standby built
from it with `pg_basebackup -R`, in a temp dir, on ports 56201-56299.

Where a statement ran is read from each server's pg_stat_statements (the extension is
created on the primary and replicated; each server counts what it executed itself): GETs
land on the replica and no write ever does, a caller reads its own write on the primary,
an API key works on the replica, a lagging or lost replica sends reads to the primary, as
does one cut off from the primary when the primary cannot be asked how far it is, readiness
reports role and lag, and multi-host URLs find the primary.
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from psycopg import sql as pg_sql
from sqlalchemy import create_engine
from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import SEED_ORDER, Cast, make_cast, make_reference_data
from tests.faults.cluster import PG_BIN, LocalPostgres
from tests.owner import owner_engine_on
from tests.pages import sign_in
from tradeops.app import create_app
from tradeops.db import migrate
from tradeops.db.embedded import ensure_database
from tradeops.db.pool import Database
from tradeops.db.replicas import ReadReplica
from tradeops.db.urls import libpq_url, psycopg_url
from tradeops.settings import Settings

pytestmark = [
    pytest.mark.slow,
    # One test process runs the module (--dist loadgroup, pyproject.toml): the pair is built
    # once, and two processes never race for the same free ports.
    pytest.mark.xdist_group("replica_pair"),
    pytest.mark.skipif(not (PG_BIN / "pg_basebackup").exists(), reason="no PostgreSQL binaries"),
]

API = "/api/v1"
PORTS = range(56201, 56300)
PORTS_LOCK = Path(tempfile.gettempdir()) / "tradeops-replica-ports.lock"
SERVER_SETTINGS = (
    "shared_preload_libraries=pg_stat_statements",
    "pg_stat_statements.track=top",
    "wal_level=replica",
    "max_wal_senders=4",
    # A throwaway cluster: no fsync. Commits still write their WAL before they return, so the
    # walsender streams each at once, as on a real primary (synchronous_commit=off would hold
    # it up to three wal_writer_delay rounds, 600 ms, in the buffers).
    "fsync=off",
)
# The data the GETs below read; the primary must run no SELECT over them while reads go to
# the replica (the lag check and the batched key-use UPDATE do not touch them). A
# one-statement read (migration 0019: GET /orders/{id}) reads with its authentication.
TABLE_READS = (
    r"query ~* '^\s*(SELECT|WITH)' AND query ~* '\m(orders|order_events|positions|clients)\M'"
    r" AND query !~* '^\s*WITH\s+refs'"  # order intake's CTE (an INSERT) starts with WITH
)
ONE_STATEMENT_READS = r"query ~* '\mtradeops_read_\w+\('"
DATA_READS = f"(({TABLE_READS}) OR {ONE_STATEMENT_READS})"
# A request's authenticating statement, or a one-statement read, which authenticates too.
AUTHENTICATIONS = r"query ~* '\m(tradeops_authenticate|tradeops_read_\w+)\('"
WRITES = r"query ~* '(^|\s|\()(INSERT|UPDATE|DELETE)\s'"
# The application's statements: not the counters' own, nor the replica's lag check.
APP_STATEMENTS = "query !~* 'pg_stat_statements|pg_current_wal_insert_lsn|pg_is_in_recovery'"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ports(count: int) -> list[int]:
    found = [port for port in PORTS if _port_free(port)][:count]
    assert len(found) == count, "no free port left in 56201-56299"
    return found


@dataclass
class Pair:
    primary: LocalPostgres
    standby: LocalPostgres
    primary_url: str
    standby_url: str


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    workdir = Path(tempfile.mkdtemp(prefix="tradeops-replica-"))
    servers: list[LocalPostgres] = []  # standby first: stopped before its primary
    try:
        # Ports are free when picked and taken only once a server listens: another test run
        # on this machine waits here meanwhile, so it never picks ours and reaches our server.
        with PORTS_LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            primary_port, standby_port = _ports(2)
            primary = LocalPostgres(
                workdir / "primary", port=primary_port, settings=SERVER_SETTINGS
            )
            standby = LocalPostgres(
                workdir / "standby", port=standby_port, settings=SERVER_SETTINGS
            )
            servers += [standby, primary]
            primary.init()
            primary.start()
            primary.wait_accepting()
            standby.standby_of(primary)
            standby.start()
            standby.wait_accepting()
        url = ensure_database(primary.url(), "tradeops")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        migrate.upgrade(url)
        yield Pair(primary, standby, url, standby.url("tradeops"))
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _settings(**changes: Any) -> Settings:
    return Settings(
        env="test",
        log_format="json",
        access_log=False,
        maintenance=False,
        _env_file=None,  # type: ignore[call-arg]
        **changes,
    )


# Short windows, so the test need not wait long: the rule is the same at 5/2/1 s.
REPLICA_SETTINGS = {
    "read_your_writes_seconds": 1.5,
    "read_max_lag_seconds": 0.5,
    "read_check_seconds": 0.25,
}


@dataclass
class Stack:
    pair: Pair
    app: FastAPI
    client: httpx.AsyncClient
    cast: Cast
    engine: AsyncEngine

    @property
    def replica(self) -> ReadReplica:
        replica: ReadReplica = self.app.state.read_replica
        return replica


@asynccontextmanager
async def serving(settings: Settings, url: str) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings, url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield app, http


@pytest.fixture(scope="module")
async def stack(pair: Pair) -> AsyncIterator[Stack]:
    settings = _settings(read_database_url=pair.standby_url, **REPLICA_SETTINGS)
    engine = owner_engine_on(pair.primary_url, pool_size=2)
    try:
        async with serving(settings, pair.primary_url) as (app, client):
            await make_reference_data(engine)
            cast = await make_cast(engine, app.state.tokens)
            yield Stack(pair, app, client, cast, engine)
    finally:
        await engine.dispose()


def _query(url: str, statement: str) -> Any:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(statement).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return row[0]


def calls(url: str, where: str) -> int:
    """Executions, on the server at `url`, of the statements matching `where`."""
    return int(_query(url, f"SELECT COALESCE(sum(calls), 0) FROM pg_stat_statements WHERE {where}"))


def reset_counts(*urls: str) -> None:
    for url in urls:
        _query(url, "SELECT pg_stat_statements_reset()::text")


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not within the timeout"
        await asyncio.sleep(0.05)


async def ready(stack: Stack) -> dict[str, Any]:
    answer = await stack.client.get("/health/ready")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def reads_on_replica(stack: Stack) -> None:
    async def fit() -> bool:
        return bool((await ready(stack))["read_replica"]["reads_on"] == "replica")

    await eventually(fit)


async def submit(stack: Stack, who: str = "trader") -> dict[str, Any]:
    created = await stack.client.post(f"{API}/orders", json=SEED_ORDER, headers=stack.cast[who])
    assert created.status_code == 201, created.text
    order: dict[str, Any] = created.json()
    return order


async def replayed(pair: Pair) -> None:
    """Wait until the standby has replayed everything the primary has written."""
    position = _query(pair.primary_url, "SELECT pg_current_wal_insert_lsn()::text")

    async def caught_up() -> bool:
        behind = _query(
            pair.standby_url, f"SELECT pg_wal_lsn_diff('{position}', pg_last_wal_replay_lsn())"
        )
        return bool(behind <= 0)

    await eventually(caught_up)


async def test_gets_land_on_the_replica_and_no_write_ever_does(stack: Stack) -> None:
    pair = stack.pair
    async with stack.engine.begin() as conn:  # as if the agent's key had never been used
        await conn.execute(sql("UPDATE api_keys SET last_used_at = NULL"))
    order = await submit(stack)
    await replayed(pair)
    await asyncio.sleep(REPLICA_SETTINGS["read_your_writes_seconds"])  # past the trader's write
    await reads_on_replica(stack)
    reset_counts(pair.primary_url, pair.standby_url)

    reads = [
        ("agent", f"{API}/orders"),
        ("agent", f"{API}/orders/{order['id']}"),
        ("agent", f"{API}/orders/{order['id']}/events"),
        ("agent", f"{API}/auth/me"),
        ("trader2", f"{API}/orders?status=PENDING"),
        ("trader2", f"{API}/positions"),
        ("trader2", f"{API}/clients"),
        ("approver", f"{API}/orders/{order['id']}"),
        ("approver", f"{API}/clients/CUST-1001/portfolio"),
    ]
    # A replica whose last lag check is over two intervals old takes no reads (db/replicas.py):
    # on a machine busy enough to delay that 0.25 s check, one read may rightly go to the
    # primary. Routing is proved by a round in which none did (three tries).
    for _ in range(3):
        reset_counts(pair.primary_url, pair.standby_url)
        for who, path in reads:
            answer = await stack.client.get(path, headers=stack.cast[who])
            assert answer.status_code == 200, (path, answer.text)
        if calls(pair.primary_url, DATA_READS) == 0:
            break

    assert calls(pair.standby_url, DATA_READS) >= len(reads) - 1, "all but /auth/me read data"
    assert calls(pair.primary_url, DATA_READS) == 0, "no GET read its data on the primary"
    # Every GET authenticated on the replica (GET /orders/{id} and the portfolio inside
    # their one statement).
    assert calls(pair.standby_url, AUTHENTICATIONS) == len(reads), "authentication, on the replica"
    assert calls(pair.standby_url, WRITES) == 0
    # The key's use is written afterwards, on the primary, in one batched UPDATE (every 5 s,
    # or now).
    await stack.app.state.key_usage.flush(stack.app.state.db)
    assert calls(pair.primary_url, "query ~* 'UPDATE api_keys'") == 1
    async with stack.engine.connect() as conn:
        used = await conn.scalar(
            sql("SELECT count(*) FROM api_keys WHERE last_used_at IS NOT NULL")
        )
    assert used == 1
    # Nothing was refused on the standby (a write there is 25006, logged as an ERROR).
    assert "read-only transaction" not in pair.standby.log.read_text(errors="replace")


async def test_a_caller_reads_its_own_write_on_the_primary(stack: Stack) -> None:
    pair = stack.pair
    await reads_on_replica(stack)
    reset_counts(pair.primary_url, pair.standby_url)
    order = await submit(stack, "trader")
    assert calls(pair.standby_url, WRITES) == 0, "the write went to the primary"

    seen = await stack.client.get(f"{API}/orders/{order['id']}", headers=stack.cast["trader"])
    listed = await stack.client.get(f"{API}/orders", headers=stack.cast["trader"])
    assert seen.status_code == 200 and seen.json()["version"] == order["version"]
    assert order["id"] in [each["id"] for each in listed.json()["items"]]
    assert calls(pair.primary_url, DATA_READS) >= 2, "both reads ran on the primary"
    # On the replica, authentication only; GET /orders/{id} and the list each authenticate
    # and read in one statement, whose answer is set aside once the caller is known to have
    # written lately.
    assert calls(pair.standby_url, TABLE_READS) == 0, "on the replica, authentication only"
    assert calls(pair.standby_url, ONE_STATEMENT_READS) <= 2

    # Once the window has passed, the same caller reads on the replica again.
    await asyncio.sleep(REPLICA_SETTINGS["read_your_writes_seconds"])
    await reads_on_replica(stack)
    reset_counts(pair.primary_url, pair.standby_url)
    again = await stack.client.get(f"{API}/orders/{order['id']}", headers=stack.cast["trader"])
    assert again.json()["id"] == order["id"]
    assert (calls(pair.standby_url, DATA_READS), calls(pair.primary_url, DATA_READS)) == (1, 0)


async def test_readiness_reports_role_and_lag_and_a_lagging_replica_takes_no_reads(
    stack: Stack,
) -> None:
    pair = stack.pair
    await reads_on_replica(stack)
    body = await ready(stack)
    assert body["role"] == "primary"
    replica = body["read_replica"]
    assert (replica["status"], replica["role"]) == ("ok", "replica")
    assert replica["lag_seconds"] <= REPLICA_SETTINGS["read_max_lag_seconds"]

    _query(pair.standby_url, "SELECT pg_wal_replay_pause()::text")
    try:
        await submit(stack, "trader2")  # a write the standby will not replay for now

        async def lagging() -> bool:
            return bool((await ready(stack))["read_replica"]["status"] == "lagging")

        await eventually(lagging)
        behind = (await ready(stack))["read_replica"]
        assert behind["reads_on"] == "primary" and behind["lag_bytes"] > 0
        assert behind["lag_seconds"] > REPLICA_SETTINGS["read_max_lag_seconds"]
        reset_counts(pair.primary_url, pair.standby_url)
        answer = await stack.client.get(f"{API}/orders", headers=stack.cast["approver"])
        assert answer.status_code == 200 and len(answer.json()["items"]) >= 1
        assert (calls(pair.primary_url, DATA_READS), calls(pair.standby_url, DATA_READS)) == (1, 0)
    finally:
        _query(pair.standby_url, "SELECT pg_wal_replay_resume()::text")
    await reads_on_replica(stack)


async def test_a_lost_replica_sends_reads_to_the_primary(stack: Stack) -> None:
    pair = stack.pair
    await reads_on_replica(stack)
    pair.standby.stop()
    try:
        # At once, before a check has noticed: the read loses its replica connection and
        # runs again on the primary.
        answer = await stack.client.get(f"{API}/orders", headers=stack.cast["approver"])
        assert answer.status_code == 200, answer.text
        body = await ready(stack)
        assert body["status"] == "ok", "the primary serves; the replica is only reported"
        assert body["read_replica"]["status"] == "unreachable"
        assert body["read_replica"]["reads_on"] == "primary"
    finally:
        pair.standby.start()
        pair.standby.wait_accepting()
    await reads_on_replica(stack)


def _set_on(url: str, setting: str, value: str) -> None:
    """ALTER SYSTEM on the server at `url`, and reload its configuration."""
    with psycopg.connect(url, autocommit=True) as conn:
        statement = pg_sql.SQL("ALTER SYSTEM SET {} = {}")
        conn.execute(statement.format(pg_sql.Identifier(setting), pg_sql.Literal(value)))
        conn.execute("SELECT pg_reload_conf()")


async def test_a_replica_cut_off_from_a_primary_it_cannot_measure_against_takes_no_reads(
    stack: Stack,
) -> None:
    """The standby stops receiving WAL (its primary_conninfo emptied) while the primary takes
    writes, and this process's check cannot read the primary's position: the standby has
    received no more than it replayed, yet is behind. Within the lag allowed of the last
    check that found it caught up, it takes no reads."""
    pair = stack.pair
    await reads_on_replica(stack)
    conninfo = _query(pair.standby_url, "SHOW primary_conninfo")
    measured_against = stack.replica.primary
    nowhere = f"postgresql://postgres@127.0.0.1:{_ports(1)[0]}/tradeops"  # nothing listens
    unreachable = Database(stack.app.state.settings, nowhere)

    async def receiving() -> bool:
        return bool(_query(pair.standby_url, "SELECT count(*) FROM pg_stat_wal_receiver"))

    async def cut_off() -> bool:
        return not await receiving()

    async def lagging() -> bool:
        return bool((await ready(stack))["read_replica"]["status"] == "lagging")

    _set_on(pair.standby_url, "primary_conninfo", "")
    try:
        await eventually(cut_off)
        stack.replica.primary = unreachable
        await submit(stack, "trader2")  # the standby will not hear of it
        await eventually(lagging)
        behind = (await ready(stack))["read_replica"]
        assert behind["reads_on"] == "primary" and "lag_bytes" not in behind, behind
        # Left out (unknown) once no check it caught up with is kept and it has replayed no
        # commit since it started.
        assert behind.get("lag_seconds", math.inf) > REPLICA_SETTINGS["read_max_lag_seconds"]
        reset_counts(pair.primary_url, pair.standby_url)
        answer = await stack.client.get(f"{API}/orders", headers=stack.cast["approver"])
        assert answer.status_code == 200
        assert (calls(pair.primary_url, DATA_READS), calls(pair.standby_url, DATA_READS)) == (1, 0)
    finally:
        stack.replica.primary = measured_against
        await unreachable.dispose()
        _set_on(pair.standby_url, "primary_conninfo", conninfo)
    await eventually(receiving)
    await replayed(pair)
    await reads_on_replica(stack)


async def test_several_hosts_find_the_primary_and_a_standby_is_not_one(stack: Stack) -> None:
    pair = stack.pair
    primary, standby = pair.primary, pair.standby
    hosts = f"127.0.0.1:{standby.port},127.0.0.1:{primary.port}"
    writes = f"postgresql://postgres@{hosts}/tradeops?target_session_attrs=read-write"
    settings = _settings()

    async def server_of(url: str) -> tuple[int, bool]:
        db = Database(settings, url)
        try:
            async with db.acquire() as conn:
                row = await conn.fetchrow("SELECT inet_server_port(), pg_is_in_recovery()")
                assert row is not None
                return int(row[0]), bool(row[1])
        finally:
            await db.dispose()

    assert await server_of(writes) == (primary.port, False)
    reads = f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/tradeops"
    assert await server_of(f"{reads}?target_session_attrs=prefer-standby") == (standby.port, True)
    # psycopg (migrations, the job worker): through SQLAlchemy's URL and libpq's own.
    engine = create_engine(psycopg_url(writes))
    with engine.connect() as conn:
        assert conn.scalar(sql("SELECT inet_server_port()")) == primary.port
    engine.dispose()
    with psycopg.connect(libpq_url(writes)) as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone() == (primary.port,)
    assert migrate.current_revision(writes) == migrate.head_revision()

    async with serving(settings, writes) as (_, client):
        body = (await client.get("/health/ready")).json()
        assert (body["status"], body["role"]) == ("ok", "primary")
    # Pointed at the standby alone: not ready, API keys still authenticate (nothing on their
    # path writes), and a write is a 503 that says why, never a 500.
    async with serving(settings, pair.standby_url) as (_, client):
        answer = await client.get("/health/ready")
        assert answer.status_code == 503 and "standby" in answer.json()["detail"]
        me = await client.get(f"{API}/auth/me", headers=stack.cast["agent"])
        assert me.status_code == 200, me.text
        write = await client.post(f"{API}/orders", json=SEED_ORDER, headers=stack.cast["trader"])
        assert write.status_code == 503 and write.json()["type"].endswith("/database-read-only")
        assert write.headers["Retry-After"]


async def test_the_approval_queue_page_reads_on_the_replica(stack: Stack) -> None:
    pair = stack.pair
    await reads_on_replica(stack)
    transport = httpx.ASGITransport(app=stack.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as browser:
        signed_in = await sign_in(browser, "approver@test.bank")
        assert signed_in.status_code == 303, signed_in.text
        reset_counts(pair.primary_url, pair.standby_url)
        queue = await browser.get("/ui/orders")
        rows = await browser.get("/ui/orders/rows")
    assert queue.status_code == 200 and rows.status_code == 200
    assert calls(pair.standby_url, DATA_READS) >= 2
    assert calls(pair.primary_url, DATA_READS) == 0


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


async def test_figures_read_latency_and_replica_lag(stack: Stack) -> None:
    """Not a rule: the figures quoted in docs/operations.md (printed with -s)."""
    pair = stack.pair
    order = await submit(stack, "trader2")
    await replayed(pair)
    await reads_on_replica(stack)
    path, agent = f"{API}/orders/{order['id']}", stack.cast["agent"]

    async def timed(client: httpx.AsyncClient) -> float:
        started = time.perf_counter()
        answer = await client.get(path, headers=agent)
        assert answer.status_code == 200, answer.text
        return time.perf_counter() - started

    async with serving(_settings(), pair.primary_url) as (_, on_primary):
        for _ in range(10):  # warm both pools and statement caches
            await timed(stack.client)
            await timed(on_primary)
        replica_times, primary_times = [], []
        for _ in range(100):  # interleaved, so both see the same machine load
            replica_times.append(await timed(stack.client))
            primary_times.append(await timed(on_primary))
        # What the primary executes per GET: the replica's load taken off it.
        on_primary_per_get = {}
        for name, client in (("via_replica", stack.client), ("primary_only", on_primary)):
            reset_counts(pair.primary_url)
            for _ in range(20):
                await timed(client)
            on_primary_per_get[name] = calls(pair.primary_url, APP_STATEMENTS) / 20

    replay_delays = []
    async with await psycopg.AsyncConnection.connect(pair.standby_url, autocommit=True) as standby:
        for _ in range(50):  # each write, then how long until the standby has replayed it
            await submit(stack, "trader")
            written = _query(pair.primary_url, "SELECT pg_current_wal_insert_lsn()::text")
            started = time.perf_counter()
            while True:
                cursor = await standby.execute(
                    "SELECT pg_wal_lsn_diff(%s, pg_last_wal_replay_lsn())", (written,)
                )
                row = await cursor.fetchone()
                if row is not None and row[0] <= 0:
                    break
            replay_delays.append(time.perf_counter() - started)
    figures = {
        "get_order_median_ms_via_replica": _median_ms(replica_times),
        "get_order_median_ms_primary_only": _median_ms(primary_times),
        "replayed_after_write_median_ms": _median_ms(replay_delays),
        "replayed_after_write_max_ms": round(max(replay_delays) * 1000, 2),
        "primary_statements_per_get_via_replica": on_primary_per_get["via_replica"],
        "primary_statements_per_get_primary_only": on_primary_per_get["primary_only"],
        "writes": len(replay_delays),
    }
    print(f"\nread replica figures: {figures}")
