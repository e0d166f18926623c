"""Load benchmark: our server against three peers, same load: a bare Starlette + asyncpg app
(same SQL), the same app doing our database work (same-work), and seed 000's app.

    make bench BENCH_ARGS="--duration 20 --only post_order"

Starts (or uses) PostgreSQL, a fresh migrated database with the demo reference data, our
server and the peers (bench/bare_app.py, bench/peers/seed000), then runs every scenario with
wrk against ours and the peers taking turns, starts ours and the same-work peer with 1 and
with --workers N workers for the scaling step, checks the issues' targets and writes
bench/results/<date>.json and a chart of it next to it (.png). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import operator
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

import tradeops
from tradeops.auth import api_keys
from tradeops.auth.api_keys import ApiKeyCreate
from tradeops.auth.principal import SYSTEM
from tradeops.db import migrate
from tradeops.db.embedded import ensure_database, start_embedded
from tradeops.db.pool import Database
from tradeops.db.uow import UnitOfWork, run_in_transaction
from tradeops.db.urls import libpq_url
from tradeops.demo import load_demo_data, load_demo_users
from tradeops.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LUA = BENCH / "lua"
WORK = BENCH / ".work"  # git-ignored: server logs, request bodies, id lists
RESULTS = BENCH / "results"
SEED000 = BENCH / "peers" / "seed000"  # seed 000's app, as the seed wrote it
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
WRK_TIMEOUT_SECONDS = 2  # wrk's default; a slower response counts as errors.timeout
READY_TIMEOUT_SECONDS = 60
API = "/api/v1"  # where ours, bare and same-work answer; seed 000's app has no prefix
ORDERS = "/orders"  # scenario paths are relative to a server's api_root
SEED_ORDER = {
    "client_id": "CUST-1001",
    "symbol": "AAPL",
    "side": "BUY",
    "quantity": 50,
    "price": 192.55,
}

console = Console(width=None if sys.stdout.isatty() else 160)  # a log file gets the full table


class BenchError(Exception):
    """A failure that makes the numbers meaningless: report it and exit 1."""


_AGENT_KEY: list[str] = []
_PUBLISHER_KEY: list[str] = []  # an admin's key with marketdata:write, for bulk_snapshots_1000


def our_headers() -> dict[str, str]:
    """Headers sent with every request to our server only: the demo agent's API key, so every
    request pays for authentication as a real agent's would."""
    return {"Authorization": f"Bearer {_AGENT_KEY[0]}"} if _AGENT_KEY else {}


# --- servers -------------------------------------------------------------------------------


@dataclass
class Server:
    name: str  # "ours", "bare", "same" or "seed000"
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    headers: dict[str, str]
    api_root: str = API

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One request on a new connection; `headers` replace the server's usual ones."""
        connection = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            sent = self.headers if headers is None else headers
            sent = {"Content-Type": "application/json", **sent} if body else sent
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def running_server(
    name: str,
    command: list[str],
    env: dict[str, str],
    headers: dict[str, str],
    api_root: str = API,
    ready_path: str = "/health/ready",
) -> Iterator[Server]:
    """Start `command --port <free port>`, wait for `ready_path` = 200; SIGTERM it at the end."""
    port = free_port()
    command = [*command, "--port", str(port)]
    log = WORK / f"{name}.log"
    console.print(f"starting {name}: {' '.join(command)}  [dim](log: {log})[/dim]")
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(name, port, process, log, headers, api_root)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                raise BenchError(f"{name} exited with {process.returncode}:\n{log_tail(log)}")
            try:
                if server.request("GET", ready_path)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{name} not ready after {READY_TIMEOUT_SECONDS} s")
            time.sleep(0.2)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- database ------------------------------------------------------------------------------


@contextmanager
def bench_database() -> Iterator[tuple[str, str]]:
    """(server URL, URL of a fresh database with schema and demo data); dropped afterwards."""
    server_url = os.environ.get("TRADEOPS_BENCH_DATABASE_URL")
    if server_url:
        console.print("PostgreSQL: TRADEOPS_BENCH_DATABASE_URL")
    else:
        pgdata = ROOT / ".tradeops" / "bench-pgdata"
        console.print(f"PostgreSQL: embedded, in {pgdata}")
        # The handle stops the server when this process exits.
        server_url = str(start_embedded(pgdata).get_uri())
    name = f"tradeops_bench_{datetime.now():%Y%m%d_%H%M%S}"
    url = ensure_database(server_url, name)
    try:
        migrate.upgrade(url)
        added = asyncio.run(load_demo(url))
        console.print(f"database {name}: migrated, demo data {added}")
        yield server_url, url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        console.print(f"database {name}: dropped")


# The book of portfolio_500: CUST-1002 (EQ-US, the demo agent's desk) holds PORTFOLIO_SIZE
# instruments of its own (BP0001…), each with three prices; every 10th position is flat
# (closed, with realized P&L), every 7th short, and every 100th (flat) has no price at all.
# Written directly in one statement: the benchmark measures reading it, not booking it.
PORTFOLIO_CLIENT = "CUST-1002"
PORTFOLIO_SIZE = 500
BENCH_BOOK = """
WITH new_instruments AS (
    INSERT INTO instruments (symbol, name, currency, lot_size, tick_size)
    SELECT 'BP' || lpad(n::text, 4, '0'), 'Bench portfolio ' || n, 'USD', 1, 0.01
    FROM generate_series(1, :size) AS n
    RETURNING id, substr(symbol, 3)::int AS n),
prices AS (
    INSERT INTO market_snapshots (instrument_id, price, as_of, source)
    SELECT id, 40 + n % 89 + k * 0.37, timestamptz '2026-11-23 16:00Z' - k * interval '1 hour',
        'bench'
    FROM new_instruments, generate_series(0, 2) AS k WHERE n % 100 <> 0),
book AS (
    SELECT id, n, CASE WHEN n % 10 = 0 THEN 0 WHEN n % 7 = 0 THEN -(10 + n) ELSE 10 + n END
        AS quantity, 50 + n % 97 + 0.25 AS avg_cost
    FROM new_instruments)
INSERT INTO positions (desk_id, client_id, instrument_id, quantity, avg_cost, cost_basis,
    realized_pnl)
SELECT c.desk_id, c.id, book.id, quantity, CASE WHEN quantity <> 0 THEN avg_cost END,
    quantity * avg_cost, (n % 13 - 6) * 12.5
FROM book, clients c WHERE c.external_id = :client_id
"""


async def load_demo(url: str) -> dict[str, int]:
    """Demo data and users, an API key for the demo agent (orders:read, orders:write,
    positions:read), a market data feed's key (the demo admin's, marketdata:write), and the
    book of portfolio_500."""
    db = Database(Settings(), url)
    key = ApiKeyCreate(
        name="bench",
        scopes=["orders:read", "orders:write", "positions:read"],
        owner_email="agent@demo.test",
    )
    feed = ApiKeyCreate(
        name="bench feed", scopes=["marketdata:write"], owner_email="admin@demo.test"
    )

    async def load(uow: UnitOfWork) -> dict[str, int]:
        added = await load_demo_data(uow, SYSTEM)
        await load_demo_users(uow, SYSTEM, password=None)
        _AGENT_KEY[:] = [(await api_keys.create_api_key(uow, SYSTEM, key)).key]
        _PUBLISHER_KEY[:] = [(await api_keys.create_api_key(uow, SYSTEM, feed)).key]
        await uow.execute(BENCH_BOOK, {"size": PORTFOLIO_SIZE, "client_id": PORTFOLIO_CLIENT})
        return added

    try:
        return await run_in_transaction(db, SYSTEM, load)
    finally:
        await db.dispose()


def postgres_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


# --- scenarios -----------------------------------------------------------------------------


# The runs of a scenario, by name: "ours", "bare", "same_work", "seed000" at --connections,
# and "ours_light": ours again at --light-connections.
Runs = dict[str, "RunResult"]
# A run's server, its wrk environment (the scenario's setup) and its load (take_turns).
Turn = tuple["Server", dict[str, str], "WrkSettings"]
COMPARISONS = {"<": operator.lt, "<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Target:
    """One figure the issues set a bound on. `what` may name {load} (--connections) and
    {light} (--light-connections)."""

    what: str
    value: Callable[[Runs], float]
    comparison: str  # a key of COMPARISONS
    bound: float

    def check(self, runs: Runs, load: int, light: int) -> dict[str, Any]:
        value = self.value(runs)
        met = COMPARISONS[self.comparison](value, self.bound)
        return {
            "target": self.what.format(load=load, light=light),
            "value": round(value, 3),
            "comparison": self.comparison,
            "bound": self.bound,
            "result": "PASS" if met else "FAIL",
            # The same figure in each round alone: how far one round moves it on this
            # machine, beside the distance to the bound (the run's noise, issue 15).
            "rounds": [round(self.value(runs_of), 3) for runs_of in by_round(runs)],
        }


def by_round(runs: Runs) -> list[Runs]:
    """The runs of each round alone (take_turns: round k of every run was taken in the same
    turn), or none if the runs were not all taken in the same number of rounds."""
    counts = {len(run.rounds) for run in runs.values()}
    if len(counts) != 1 or counts == {0}:
        return []
    (count,) = counts
    return [
        {name: RunResult(**{**run.rounds[k], "rounds": []}) for name, run in runs.items()}
        for k in range(count)
    ]


def rps_ratio(run: str, peer: str) -> Callable[[Runs], float]:
    return lambda runs: runs[run].rps / runs[peer].rps if runs[peer].rps else 0.0


def p99(run: str) -> Callable[[Runs], float]:
    return lambda runs: runs[run].p99_ms


def p99_over_p50(run: str) -> Callable[[Runs], float]:
    return lambda runs: runs[run].p99_ms / runs[run].p50_ms if runs[run].p50_ms else 0.0


@dataclass(frozen=True)
class Scenario:
    """One kind of request, run with identical wrk settings against ours and the peers."""

    name: str
    method: str
    path: str  # below the server's api_root; static.lua sends it as is
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)  # to every server
    script: str = "static.lua"  # in bench/lua
    # Runs before the warm-up, once per server; returns extra environment for the script.
    setup: Callable[[Server], dict[str, str]] | None = None
    targets: tuple[Target, ...] = ()
    seed000: bool = False  # seed 000's app has the endpoint: run it as a peer
    # Run the same-work peer in two round trips too (psycopg's pipeline mode): what the
    # write would cost with at most two round trips, beside ours and same-work's four.
    two_round_trips: bool = False


def create_orders(count: int) -> Callable[[Server], dict[str, str]]:
    """Setup: create `count` orders through the server's API; BENCH_IDS_FILE lists their ids.
    (Seed 000's app answers a new order with 200, ours and the peers with 201.)"""

    def setup(server: Server) -> dict[str, str]:
        body = json.dumps(SEED_ORDER).encode()
        path = server.api_root + ORDERS
        ids = []
        for _ in range(count):
            status, answer = server.request("POST", path, body)
            if status not in (200, 201):
                raise BenchError(f"{server.name}: POST {path} answered {status}: {answer!r}")
            ids.append(str(json.loads(answer)["id"]))
        ids_file = WORK / f"ids-{server.name}.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        return {"BENCH_IDS_FILE": str(ids_file)}

    return setup


JSON = {"Content-Type": "application/json"}
# The targets of issue 15 (and of the issues before it, for the portfolio and the upload).
SCENARIOS = [
    Scenario(
        "post_order",
        "POST",
        ORDERS,
        json.dumps(SEED_ORDER).encode(),
        JSON,
        targets=(
            Target("ours/bare req/s", rps_ratio("ours", "bare"), ">=", 0.40),
            Target("ours/seed000 req/s", rps_ratio("ours", "seed000"), ">=", 2.5),
            Target("p99/p50 at {load} conn", p99_over_p50("ours"), "<=", 2.0),
            Target("p99 ms at {light} conn", p99("ours_light"), "<", 25.0),
        ),
        seed000=True,
        two_round_trips=True,
    ),
    Scenario(
        "get_order",
        "GET",
        ORDERS + "/{id}",
        script="random_id.lua",
        setup=create_orders(1000),
        targets=(
            Target("ours/bare req/s", rps_ratio("ours", "bare"), ">=", 0.40),
            Target("ours/seed000 req/s", rps_ratio("ours", "seed000"), ">=", 4.0),
            Target("p99 ms at {load} conn", p99("ours"), "<", 60.0),
            Target("p99 ms at {light} conn", p99("ours_light"), "<", 25.0),
        ),
        seed000=True,
    ),
    Scenario(
        "portfolio_500",
        "GET",
        f"/clients/{PORTFOLIO_CLIENT}/portfolio",
        targets=(
            Target("p99 ms at {light} conn", p99("ours_light"), "<", 20.0),
            Target("ours/same-work req/s", rps_ratio("ours", "same_work"), ">=", 0.9),
        ),
    ),
]
RSS_TARGET_MB = 150.0  # per worker of ours, after the bench


# --- timed steps (ours only) ----------------------------------------------------------------

SNAPSHOTS = API + "/market-data/snapshots"
DEMO_SYMBOLS = ["AAPL", "MSFT", "NVDA", "JPM", "SPY", "ACME", "DBR-2034"]
BULK_STEP = "bulk_snapshots_1000"
BULK_SIZE = 1000
BULK_UPLOADS = 20
BULK_WARMUP = 2
BULK_TARGET_P99_MS = 100.0


def snapshot_batch(upload: int, size: int = BULK_SIZE) -> bytes:
    """`size` new prices (the demo instruments in turn, each its own as_of): all stored."""
    start = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=upload)
    snapshots = [
        {
            "symbol": DEMO_SYMBOLS[i % len(DEMO_SYMBOLS)],
            "price": f"{100 + (i % 997) / 100:.2f}",
            "bid": f"{100 + (i % 997) / 100 - 0.01:.2f}",
            "ask": f"{100 + (i % 997) / 100 + 0.01:.2f}",
            "as_of": (start + timedelta(milliseconds=i)).isoformat(),
            "source": "bench",
        }
        for i in range(size)
    ]
    return json.dumps({"snapshots": snapshots}).encode()


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: with 20 samples, p99 is the slowest."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def time_bulk_snapshots(server: Server) -> dict[str, Any]:
    """POST 1000 prices in one request, BULK_UPLOADS times one after another (after
    BULK_WARMUP unrecorded ones), each storing 1000 new rows; elapsed client-side."""
    if not _PUBLISHER_KEY:
        raise BenchError("no market data key: load_demo() did not run")
    headers = {"Authorization": f"Bearer {_PUBLISHER_KEY[0]}"}
    bodies = [snapshot_batch(n) for n in range(BULK_WARMUP + BULK_UPLOADS)]
    elapsed_ms: list[float] = []
    for n, body in enumerate(bodies):
        started = time.perf_counter()
        status, answer = server.request("POST", SNAPSHOTS, body, headers)
        took = (time.perf_counter() - started) * 1000
        if status != 201 or json.loads(answer)["stored"] != BULK_SIZE:
            raise BenchError(f"{server.name}: POST {SNAPSHOTS} answered {status}: {answer!r}")
        if n >= BULK_WARMUP:
            elapsed_ms.append(took)
    result = {
        "uploads": BULK_UPLOADS,
        "snapshots_per_upload": BULK_SIZE,
        "body_bytes": len(bodies[-1]),
        "p50_ms": round(percentile(elapsed_ms, 0.50), 2),
        "p99_ms": round(percentile(elapsed_ms, 0.99), 2),
        "mean_ms": round(statistics.fmean(elapsed_ms), 2),
        "min_ms": round(min(elapsed_ms), 2),
        "samples_ms": [round(ms, 2) for ms in elapsed_ms],
        "target_p99_ms": BULK_TARGET_P99_MS,
    }
    result["result"] = "PASS" if result["p99_ms"] < BULK_TARGET_P99_MS else "FAIL"
    console.print(
        f"{BULK_STEP} ours  {BULK_UPLOADS} uploads of {BULK_SIZE}: p50 {result['p50_ms']:.2f} ms"
        f"  p99 {result['p99_ms']:.2f} ms  (target p99 < {BULK_TARGET_P99_MS:g} ms:"
        f" {result['result']})"
    )
    return result


# --- scaling: ours with several workers (issue 15) ------------------------------------------

SCALING_STEP = "scaling"
SCALING_SCENARIOS = ("get_order", "post_order")  # by name, from SCENARIOS
SCALING_NOISE = 0.15  # the noise band: N workers pass at >= 85% of the expected req/s


def expected_rps(one: RunResult, many: RunResult, workers: int) -> dict[str, Any]:
    """The req/s N workers should reach on this machine, from what one worker did.

    One worker is one Python process: at most one core's worth of requests. N workers could
    do N times that if each had a core, but every request also costs PostgreSQL's CPU and
    wrk's, on the same cores (2 here). Once the cores are full, req/s = free cores / CPU per
    request, however many workers there are. So

        expected = min(N * r1, (cores - others) * 1000 / (app + PG + wrk ms per request))

    r1 and the CPU ms per request are the 1-worker run's (what a request costs; if N workers
    make it cost more, that is a scaling loss the check should show, not excuse). `others`
    is the cores' worth the rest of the machine took during the N-worker run (other
    processes, the idle peers, steal), so a busy machine lowers the bound instead of failing
    the check. PostgreSQL counts when it runs here (otherwise it takes none of these cores).
    """
    cores = len(os.sched_getaffinity(0))
    cost_ms = (
        (one.cpu_ms_per_request or 0.0)
        + (one.db_cpu_ms_per_request or 0.0)
        + (one.wrk_cpu_ms_per_request or 0.0)
    )
    free_cores = max(cores - (many.other_cores or 0.0), 0.0)
    if_workers = workers * one.rps
    if_cores = free_cores * 1000 / cost_ms if cost_ms else if_workers
    expected = min(if_workers, if_cores)
    share = many.rps / expected if expected else 0.0
    return {
        "cores": cores,
        "free_cores": round(free_cores, 2),
        "cpu_ms_per_request_1_worker": round(cost_ms, 3),
        "expected_if_workers_rps": round(if_workers, 1),
        "expected_if_cores_rps": round(if_cores, 1),
        "expected_rps": round(expected, 1),
        "bound_by": "workers" if if_workers <= if_cores else "cores",
        "measured_over_expected": round(share, 3),
        "result": "PASS" if share >= 1 - SCALING_NOISE else "FAIL",
    }


def worker_run(run: RunResult, workers: int) -> dict[str, Any]:
    return {"workers": workers, **asdict(run), "rps_per_worker": round(run.rps / workers, 1)}


def scaling_row(one: RunResult, many: RunResult, workers: int) -> dict[str, Any]:
    """A server with 1 worker and with N: each run, and the N-worker run against its
    expectation."""
    row = {
        "one_worker": worker_run(one, 1),
        "n_workers": worker_run(many, workers),
        "ratio_rps": round(many.rps / one.rps, 3) if one.rps else 0.0,
        **expected_rps(one, many, workers),
    }
    if one.errors or many.errors:
        row["result"] = "ERRORS"
    return row


def run_scaling(
    wrk: str,
    target: tuple[str, DatabaseCpu],
    settings: tuple[WrkSettings, int],
    workers: int,
    stop_servers: Callable[[], None],
    pool: int,
) -> dict[str, Any]:
    """GET /orders/{id} and POST /orders against ours with 1 worker and with `workers`
    workers, both started for this step, at the load's connections, taking turns
    (`take_turns`): two servers measured a minute apart compared the machine's moments.
    The same-work peer runs the same way beside them, with 1 worker and with N (a
    reference, not a target): what N workers give a stack that does only our database
    work, on the same cores.

    The N workers share the one worker's `pool` of connections (at least 2 each), as
    docs/operations.md sizes pools: by PostgreSQL's cores, over all processes. N pools of
    the one worker's size would put N times the connections on the same cores.

    The other servers are stopped first (`stop_servers`): their idle pools hold connections
    (20 each, seed 000's up to 30) that N workers' pools (20 each) need under PostgreSQL's
    max_connections (100 by default; with them, POST /orders got 503s), and their idle CPU
    would be noise."""
    url, database = target
    load, rounds = settings
    scenarios = [s for s in SCENARIOS if s.name in SCALING_SCENARIOS]
    stop_servers()
    pool_per_worker = max(2, pool // workers)
    n = f"{workers}w"
    same_work = [*BARE_COMMAND, "--same-work"]
    starts = {
        "ours 1w": our_server(url, 1, pool),
        f"ours {n}": our_server(url, workers, pool_per_worker),
        "same-work 1w": running_server(
            "same-1w", same_work, bare_peer_env(url, pool, pool), our_headers()
        ),
        f"same-work {n}": running_server(
            f"same-{n}",
            [*same_work, "--workers", str(workers)],
            bare_peer_env(url, pool_per_worker, pool_per_worker),
            our_headers(),
        ),
    }
    done: dict[str, dict[str, RunResult]] = {}
    with ExitStack() as stack:
        servers = {label: stack.enter_context(start) for label, start in starts.items()}
        for scenario in scenarios:
            turns: dict[str, Turn] = {}
            for label, running in servers.items():
                extra_env = scenario.setup(running) if scenario.setup else {}
                turns[label] = (running, extra_env, load)
            done[scenario.name] = take_turns(wrk, database, scenario, turns, rounds)
        rss = rss_mb(servers[f"ours {n}"].process.pid)
    rows = {}
    for name, runs in done.items():
        rows[name] = {
            **scaling_row(runs["ours 1w"], runs[f"ours {n}"], workers),
            "same_work": scaling_row(runs["same-work 1w"], runs[f"same-work {n}"], workers),
        }
    return {
        "workers": workers,
        "pool_per_worker": pool_per_worker,
        "connections": load.connections,
        "noise_band": SCALING_NOISE,
        "scenarios": rows,  # ours, and the same-work peer's under "same_work"
        "rss_mb_n_workers": rss,  # each process of the N-worker server, by pid, at its end
    }


def scaling_check(scaling: dict[str, Any]) -> dict[str, Any]:
    """The worst scenario's measured / expected req/s; ERRORS when any of its runs had one."""
    name, worst = min(scaling["scenarios"].items(), key=lambda i: i[1]["measured_over_expected"])
    results = {row["result"] for row in scaling["scenarios"].values()}
    result = "ERRORS" if "ERRORS" in results else "FAIL" if "FAIL" in results else "PASS"
    return {
        "target": f"{scaling['workers']} workers req/s / expected (worst: {name})",
        "value": worst["measured_over_expected"],
        "comparison": ">=",
        "bound": 1 - SCALING_NOISE,
        "result": result,
    }


# --- wrk -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkSettings:
    duration_s: float
    warmup_s: float
    connections: int
    threads: int
    timeout_s: int = WRK_TIMEOUT_SECONDS


@dataclass(frozen=True)
class RunResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # all kinds; non-2xx responses are in errors_by_kind["status"]
    errors_by_kind: dict[str, int]
    connections: int = 0
    # User + system CPU during the measured run, per request: the server's processes, and the
    # bench database's PostgreSQL backends (None when PostgreSQL runs on another machine).
    cpu_ms_per_request: float | None = None
    db_cpu_ms_per_request: float | None = None
    # wrk's own CPU per request (its threads, from the rusage of the child reaped), and the
    # cores' worth of CPU the rest of the machine took meanwhile (other processes, the idle
    # servers, a hypervisor's steal): what the scaling step's expectation is built from.
    wrk_cpu_ms_per_request: float | None = None
    other_cores: float | None = None
    # The cores' worth left idle meanwhile: near 0, the run had the machine's every core busy
    # (it was bound by CPU, whatever any process's own share).
    idle_cores: float | None = None
    # The runs this one is made of (take_turns), each as a dict of the fields above.
    rounds: list[dict[str, Any]] = field(default_factory=list)


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise BenchError("wrk is not installed (and we are not root): apt-get install wrk")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        console.print(f"wrk not found: running {' '.join(command)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(command, check=True, env=env)
    found = shutil.which("wrk")
    if not found:
        raise BenchError("wrk still missing after apt-get install")
    return found


def wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0].strip()


def run_wrk(
    wrk: str,
    server: Server,
    scenario: Scenario,
    extra_env: dict[str, str],
    settings: WrkSettings,
    duration_s: float,
) -> RunResult:
    env = {
        **os.environ,
        **extra_env,
        "BENCH_LUA_DIR": str(LUA),
        "BENCH_METHOD": scenario.method,
        "BENCH_PATH": server.api_root + scenario.path,
        "BENCH_HEADERS": "\n".join(
            f"{k}: {v}" for k, v in {**scenario.headers, **server.headers}.items()
        ),
        "BENCH_BODY_FILE": "",
    }
    if scenario.body is not None:
        body_file = WORK / f"{scenario.name}.body"
        body_file.write_bytes(scenario.body)
        env["BENCH_BODY_FILE"] = str(body_file)
    command = [
        wrk,
        f"--threads={settings.threads}",
        f"--connections={settings.connections}",
        f"--duration={duration_s:g}s",
        f"--timeout={settings.timeout_s}s",
        f"--script={LUA / scenario.script}",
        f"http://{HOST}:{server.port}",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
    if done.returncode != 0 or not lines:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    raw: dict[str, Any] = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    errors: dict[str, int] = raw["errors"]
    return RunResult(
        rps=round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        p50_ms=round(raw["p50_us"] / 1000, 2),
        p99_ms=round(raw["p99_us"] / 1000, 2),
        requests=raw["requests"],
        errors=sum(errors.values()),
        errors_by_kind=errors,
        connections=settings.connections,
    )


def measure(
    wrk: str,
    target: tuple[Server, DatabaseCpu],
    scenario: Scenario,
    extra_env: dict[str, str],
    settings: WrkSettings,
    label: str,
) -> RunResult:
    server, database = target
    if settings.warmup_s > 0:
        run_wrk(wrk, server, scenario, extra_env, settings, settings.warmup_s)
    cpu_before, db_before = cpu_seconds(server.process.pid), database.snapshot()
    wrk_before, machine_before, started = wrk_cpu_seconds(), machine_cpu_seconds(), time.monotonic()
    result = run_wrk(wrk, server, scenario, extra_env, settings, settings.duration_s)
    elapsed = time.monotonic() - started
    machine_used = machine_cpu_seconds() - machine_before
    wrk_used = wrk_cpu_seconds() - wrk_before
    requests = max(result.requests, 1)
    app_used = cpu_seconds(server.process.pid) - cpu_before
    cpu_ms = app_used * 1000 / requests
    db_seconds = database.used_since(db_before)
    db_ms = None if db_seconds is None else round(db_seconds * 1000 / requests, 3)
    others = machine_used - app_used - (db_seconds or 0.0) - wrk_used
    idle = len(os.sched_getaffinity(0)) * elapsed - machine_used
    result = replace(
        result,
        cpu_ms_per_request=round(cpu_ms, 3),
        db_cpu_ms_per_request=db_ms,
        wrk_cpu_ms_per_request=round(wrk_used * 1000 / requests, 3),
        other_cores=round(max(others, 0.0) / elapsed, 2),
        idle_cores=round(max(idle, 0.0) / elapsed, 2),
    )
    note = f"  [red]{result.errors} errors {result.errors_by_kind}[/red]" if result.errors else ""
    console.print(
        f"{scenario.name:<13} {label:<10} {settings.connections:>3} conn {result.rps:>9.1f} req/s"
        f"  p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms"
        f"  cpu {cpu_ms:.2f} ms/req (PostgreSQL {db_ms if db_ms is not None else '?'},"
        f" wrk {result.wrk_cpu_ms_per_request:.2f}; others {result.other_cores:.2f} cores,"
        f" idle {result.idle_cores:.2f}){note}"
    )
    return result


# --- server processes (from /proc) -----------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (uvicorn's workers, when it runs several)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").glob("*/children"))
        except OSError:  # it ended while we looked
            continue
        for children in tasks:
            with suppress(OSError):
                todo += [int(child) for child in children.read_text().split()]
    return pids


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds one process (all its threads) has used; None if not here."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU the server's processes have used so far."""
    return sum(process_cpu(process) or 0.0 for process in process_tree(pid))


def wrk_cpu_seconds() -> float:
    """User + system CPU of this process's children reaped so far. Only wrk is reaped while a
    run is measured (the servers live on), so the difference across a run is wrk's."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# A core's line in /proc/stat: cpuN user nice system idle iowait irq softirq steal ...
# Busy is everything but idle and iowait; steal counts too: a hypervisor's other guests had
# the core. (Guest time is already inside user.)
BUSY_FIELDS = (1, 2, 3, 6, 7, 8)


def machine_cpu_seconds() -> float:
    """CPU seconds the cores the bench may run on (its affinity: wrk, the servers and the
    embedded PostgreSQL inherit it) have been busy or stolen since boot."""
    cores = {f"cpu{n}" for n in os.sched_getaffinity(0)}
    lines = [line.split() for line in Path("/proc/stat").read_text().splitlines()]
    busy = sum(int(f[i]) for f in lines if f and f[0] in cores for i in BUSY_FIELDS)
    return busy / CLOCK_TICKS


class DatabaseCpu:
    """CPU of the PostgreSQL server, read from /proc when it runs on this machine: what a
    request costs the database, the figure that sizes a database node. All its processes
    count (backends, WAL writer, checkpointer), and those that exited (a pool that closes and
    opens connections) through the postmaster's children's times, so the figure means
    something only on a server of the bench's own (the embedded one), where only the server
    under load uses it."""

    def __init__(self, url: str) -> None:
        self.postmaster: int | None = None
        with psycopg.connect(url) as connection:  # the backend lives as long as this
            row = connection.execute("SELECT pg_backend_pid()").fetchone()
            stat = Path(f"/proc/{row[0] if row else 0}/stat")
            with suppress(OSError):  # no such process here: PostgreSQL is on another machine
                name, _, fields = stat.read_text().partition(") ")
                if name.endswith("(postgres"):  # not a process of ours that has the same pid
                    self.postmaster = int(fields.split()[1])  # the backend's parent

    def snapshot(self) -> float | None:
        if self.postmaster is None:
            return None
        try:
            fields = Path(f"/proc/{self.postmaster}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        reaped = (int(fields[13]) + int(fields[14])) / CLOCK_TICKS  # cutime, cstime
        return reaped + cpu_seconds(self.postmaster)

    def used_since(self, before: float | None) -> float | None:
        after = self.snapshot()
        return None if before is None or after is None else after - before


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory of each of the server's processes, MB (VmRSS), by pid."""
    sizes = {}
    for process in process_tree(pid):
        with suppress(OSError):
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes[str(process)] = round(int(line.split()[1]) / 1024, 1)
    return sizes


# --- report --------------------------------------------------------------------------------


def git(*args: str) -> str:
    """git in the checkout the benchmarked tradeops package comes from (normally ROOT)."""
    code = Path(tradeops.__file__).parent
    done = subprocess.run(["git", *args], cwd=code, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def provenance(started: datetime, postgresql: str) -> dict[str, Any]:
    """What a result of the PostgreSQL-alone scripts was measured on: when, which commit
    (and whether tracked files were changed), which PostgreSQL."""
    return {
        "started": started.isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "postgresql": postgresql,
    }


def results_path(day: str) -> Path:
    path, n = RESULTS / f"{day}.json", 1
    while path.exists():
        n += 1
        path = RESULTS / f"{day}-{n}.json"
    return path


RUN_LABELS = {  # in the order of the table and the chart
    "ours": "ours",
    "ours_light": "ours (light load)",
    "same_work": "same-work",
    "same_work_2rt": "same-work, 2 round trips",
    "bare": "bare",
    "seed000": "seed 000",
}


def scenario_row(scenario: Scenario, runs: Runs, load: int, light: int) -> dict[str, Any]:
    """A scenario's runs, ratios, the check of each target, and the verdict: ERRORS when any
    run had an error of any kind, else PASS when every target is met."""
    checks = [target.check(runs, load, light) for target in scenario.targets]
    if any(run.errors for run in runs.values()):
        result = "ERRORS"
    elif not checks:
        result = "-"
    else:
        result = "PASS" if all(c["result"] == "PASS" for c in checks) else "FAIL"
    row: dict[str, Any] = {"name": scenario.name}
    row.update({key: asdict(run) for key, run in runs.items()})
    for key, peer in (("ratio_rps", "bare"), ("ratio_same_work", "same_work")):
        row[key] = round(rps_ratio("ours", peer)(runs), 3)
    if "seed000" in runs:
        row["ratio_seed000"] = round(rps_ratio("ours", "seed000")(runs), 3)
    if "same_work_2rt" in runs:
        row["ratio_same_work_2rt"] = round(rps_ratio("ours", "same_work_2rt")(runs), 3)
    row["checks"] = checks
    row["result"] = result
    return row


COLORS = {"PASS": "green", "FAIL": "yellow", "ERRORS": "red", "-": "dim"}


def print_runs(rows: list[dict[str, Any]]) -> None:
    table = Table(title="req/s, p50 / p99 ms, CPU ms per request of the server and of PostgreSQL")
    columns = ("scenario", "run", "conn", "req/s", "p50 ms", "p99 ms", "cpu ms/req", "PG cpu ms")
    columns += ("both",)  # what a request costs the machine, whatever share of it a run got
    for column in columns:
        table.add_column(column, justify="left" if column in ("scenario", "run") else "right")
    for row in rows:
        for key, label in RUN_LABELS.items():
            if key in row:
                run = row[key]
                app_ms, db_ms = run["cpu_ms_per_request"], run["db_cpu_ms_per_request"]
                table.add_row(
                    row["name"],
                    label,
                    str(run["connections"]),
                    f"{run['rps']:.1f}",
                    f"{run['p50_ms']:.2f}",
                    f"{run['p99_ms']:.2f}",
                    f"{app_ms:.2f}",
                    "?" if db_ms is None else f"{db_ms:.2f}",
                    "?" if db_ms is None else f"{app_ms + db_ms:.2f}",
                )
    console.print(table)


def print_scaling(scaling: dict[str, Any]) -> None:
    """1 worker and N, per scenario, of ours and of the same-work peer: req/s, req/s per
    worker, the CPU ms per request of the server (every worker), PostgreSQL and wrk, and the
    N-worker run against its expectation."""
    workers = scaling["workers"]
    load = scaling["connections"]
    pools = f"pools of {scaling['pool_per_worker']} per worker"
    title = f"scaling: ours and same-work with 1 and {workers} workers, {load} conn, {pools}"
    table = Table(title=title)
    columns = (
        *("scenario", "workers", "req/s", "req/s/worker", "cpu ms/req", "PG cpu ms"),
        *("wrk cpu ms", "others cores", "idle cores", "/ 1 worker", "expected", "/ expected"),
        "result",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "scenario" else "right", no_wrap=True)
    for name, ours in scaling["scenarios"].items():
        for server, row in ((name, ours), (f"{name}, same-work", ours["same_work"])):
            for run in (row["one_worker"], row["n_workers"]):
                table.add_row(server, *scaling_figures(run, row, reference=server != name))
    console.print(table)
    console.print(
        f"expected = min({workers} * 1-worker req/s, (cores - others) * 1000 / (cpu + PG + wrk"
        f" ms/req of 1 worker)); PASS at >= {1 - scaling['noise_band']:g} * expected"
    )


def scaling_figures(run: dict[str, Any], row: dict[str, Any], reference: bool) -> list[str]:
    """A run's figures in the scaling table; the N-worker run's against its expectation (a
    reference's result in brackets: it is no target)."""
    db_ms = run["db_cpu_ms_per_request"]
    figures = [
        str(run["workers"]),
        f"{run['rps']:.1f}",
        f"{run['rps_per_worker']:.1f}",
        f"{run['cpu_ms_per_request']:.2f}",
        "?" if db_ms is None else f"{db_ms:.2f}",
        f"{run['wrk_cpu_ms_per_request']:.2f}",
        f"{run['other_cores']:.2f}",
        "?" if run.get("idle_cores") is None else f"{run['idle_cores']:.2f}",
    ]
    if run["workers"] == 1:
        return [*figures, "", "", "", ""]
    result = f"({row['result']})" if reference else f"[{COLORS[row['result']]}]{row['result']}[/]"
    return [
        *figures,
        f"{row['ratio_rps']:.2f}",
        f"{row['expected_rps']:.0f} ({row['bound_by']})",
        f"{row['measured_over_expected']:.2f}",
        result,
    ]


def print_checks(rows: list[dict[str, Any]], other_checks: dict[str, dict[str, Any]]) -> None:
    table = Table(title="targets (issue 15): each ratio and figure against its bound")
    for column in ("scenario", "target", "value", "rounds", "bound", "result"):
        table.add_column(column, justify="left" if column in ("scenario", "target") else "right")
    named = [(row["name"], check) for row in rows for check in row["checks"]]
    named += list(other_checks.items())
    for name, check in named:
        rounds = check.get("rounds") or []
        table.add_row(
            name,
            check["target"],
            f"{check['value']:.2f}",
            f"{min(rounds):.2f}-{max(rounds):.2f}" if rounds else "",
            f"{check['comparison']} {check['bound']:g}",
            f"[{COLORS[check['result']]}]{check['result']}[/]",
        )
    console.print(table)
    for row in rows:
        for key in RUN_LABELS:
            if key in row and row[key]["errors"]:
                console.print(
                    f"[red]{row['name']} {key}: {row[key]['errors']} errors "
                    f"{row[key]['errors_by_kind']} (status = non-2xx responses; server logs: "
                    f"bench/.work/)[/red]"
                )


def write_chart(path: Path, report: dict[str, Any]) -> None:
    """req/s and p99 of each scenario for ours and the peers, side by side, as a PNG."""
    import matplotlib  # the bench dependency group: make bench runs with it

    matplotlib.use("Agg")
    from matplotlib import pyplot

    scenarios = report["scenarios"]
    figure, (rps_axes, p99_axes) = pyplot.subplots(2, 1, figsize=(11, 8), layout="constrained")
    width = 0.8 / len(RUN_LABELS)
    for n, (key, label) in enumerate(RUN_LABELS.items()):
        present = [(i, row[key]) for i, row in enumerate(scenarios.values()) if key in row]
        if not present:
            continue
        xs = [i + (n - (len(RUN_LABELS) - 1) / 2) * width for i, _ in present]
        for axes, field_name in ((rps_axes, "rps"), (p99_axes, "p99_ms")):
            values = [run[field_name] for _, run in present]
            name = f"{label}, {present[0][1]['connections']} conn"
            bars = axes.bar(xs, values, width, label=name)
            axes.bar_label(bars, fmt="%.0f" if field_name == "rps" else "%.1f", fontsize=7)
    for axes, title in ((rps_axes, "req/s (higher is better)"), (p99_axes, "p99 ms (lower)")):
        axes.set_xticks(range(len(scenarios)), list(scenarios))
        axes.set_title(title)
        axes.legend(fontsize=8)
    machine = report["machine"]
    figure.suptitle(
        f"tradeops bench {report['started']} ({report['git_commit']}), {machine['nproc']} cores"
        f" shared with wrk and PostgreSQL {machine['postgresql'].split()[0]},"
        f" load average {machine['loadavg_at_end']:.1f} at the end"
    )
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


# --- profile: where ours spends its CPU (issue 15) ------------------------------------------

PY_SPY = BIN / "py-spy"
PROFILE_RATE = 250  # samples per second
PROFILE_TOP = 12


def profile_ours(
    wrk: str,
    server: Server,
    scenario: Scenario,
    extra_env: dict[str, str],
    settings: WrkSettings,
    path: Path,
) -> dict[str, Any]:
    """Ours under the scenario's load once more, sampled by py-spy: a run of its own after
    the measured ones, so the sampling's CPU is in none of the figures. Writes the collapsed
    stacks to `path` (speedscope.app and flamegraph tools read them) and answers where the
    samples were: the share of each package's code among the innermost frames (py-spy leaves
    out idle threads, so a share of the server's CPU) and the costliest functions."""
    spy = subprocess.Popen(
        [
            str(PY_SPY),
            "record",
            "--pid",
            str(server.process.pid),
            "--rate",
            str(PROFILE_RATE),
            "--duration",
            str(max(1, round(settings.duration_s))),
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    run_wrk(wrk, server, scenario, extra_env, settings, settings.duration_s)
    _, error = spy.communicate(timeout=settings.duration_s + 60)
    if spy.returncode != 0:
        raise BenchError(f"py-spy failed: {error.decode(errors='replace')[-500:]}")
    return summarize_stacks(path)


def summarize_stacks(path: Path) -> dict[str, Any]:
    """Shares of the samples in py-spy's collapsed stacks ("frame;...;frame count" lines,
    each frame "function (file:line)"), by the package of the innermost frame and by it."""
    by_package: dict[str, int] = {}
    by_function: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        innermost = stack.rpartition(";")[2]
        samples = int(count)
        total += samples
        package = package_of(innermost)
        by_package[package] = by_package.get(package, 0) + samples
        function = innermost.rsplit(":", 1)[0] + ")" if ":" in innermost else innermost
        by_function[function] = by_function.get(function, 0) + samples

    def shares(counts: dict[str, int], most: int) -> dict[str, float]:
        ranked = sorted(counts.items(), key=operator.itemgetter(1), reverse=True)[:most]
        return {name: round(100 * n / max(total, 1), 1) for name, n in ranked}

    return {
        "samples": total,
        "stacks": str(path.relative_to(ROOT)),
        "percent_by_package": shares(by_package, len(by_package)),
        "percent_by_function": shares(by_function, PROFILE_TOP),
    }


def package_of(frame: str) -> str:
    """The package a frame's file belongs to: py-spy names a file relative to the folder on
    sys.path it came from ("asyncpg/connection.py", "asyncio/base_events.py", "ssl.py"), so
    its first part; tradeops by domain ("tradeops.orders")."""
    parts = Path(frame.rpartition("(")[2].rsplit(":", 1)[0]).parts
    if parts and parts[0] == "tradeops" and len(parts) > 1:
        return "tradeops." + parts[1].removesuffix(".py")
    return parts[0].removesuffix(".py") if parts else frame


def print_profiles(profiles: dict[str, dict[str, Any]]) -> None:
    for name, profile in profiles.items():
        table = Table(title=f"{name}: where ours spent its CPU ({profile['samples']} samples)")
        table.add_column("package")
        table.add_column("%", justify="right")
        table.add_column("function")
        table.add_column("%", justify="right")
        packages = list(profile["percent_by_package"].items())[:PROFILE_TOP]
        functions = list(profile["percent_by_function"].items())
        for n in range(max(len(packages), len(functions))):
            package, share = packages[n] if n < len(packages) else ("", "")
            function, function_share = functions[n] if n < len(functions) else ("", "")
            table.add_row(package, str(share), function[:70], str(function_share))
        console.print(table)
        console.print(f"collapsed stacks: {profile['stacks']}")


# --- main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Load benchmark: ours vs three peers.")
    parser.add_argument(
        "--duration",
        type=float,
        default=12.0,
        help="seconds each run is measured, over its rounds (a round: duration / rounds)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="turns the runs of a scenario (and of the scaling step) take, one after another",
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument(
        "--light-connections",
        type=int,
        default=4,
        help="wrk connections of the second, light-load run against ours",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unrecorded warm-up")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="SCENARIO",
        choices=[*(s.name for s in SCENARIOS), BULK_STEP, SCALING_STEP],
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help=f"workers of ours in the {SCALING_STEP} step (0 or 1 skips it)",
    )
    parser.add_argument(
        "--two-round-trips",
        action="store_true",
        help="also run the same-work peer with POST /orders in two round trips (psycopg's "
        "pipeline mode), before seed 000",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after each scenario's runs, sample ours under its load with py-spy",
    )
    return parser.parse_args()


def our_server(
    url: str, workers: int = 1, pool_per_worker: int | None = None
) -> AbstractContextManager[Server]:
    """Ours as production runs it (`tradeops serve`), with its access log on: part of our real
    cost. With several workers it is named `ours-<N>w` (its log, its ids file).
    `pool_per_worker`: each process's pool (TRADEOPS_POOL_SIZE, no overflow); else Settings'."""
    env = {
        "TRADEOPS_DATABASE_URL": url,
        "TRADEOPS_ENV": "test",
        "TRADEOPS_LOG_FORMAT": "json",
        "TRADEOPS_ACCESS_LOG": "true",
    }
    if pool_per_worker is not None:
        env |= {"TRADEOPS_POOL_SIZE": str(pool_per_worker), "TRADEOPS_POOL_MAX_OVERFLOW": "0"}
    name = "ours" if workers == 1 else f"ours-{workers}w"
    command = [str(BIN / "tradeops"), "serve", "--workers", str(workers), "--host", HOST]
    return running_server(name, command, env, our_headers())


def bare_peer_env(url: str, pool_min: int, pool_max: int) -> dict[str, str]:
    return {
        "BARE_DATABASE_URL": libpq_url(url),
        "BARE_POOL_MIN_SIZE": str(pool_min),
        "BARE_POOL_MAX_SIZE": str(pool_max),
    }


BARE_COMMAND = [str(BIN / "python"), str(BENCH / "bare_app.py"), "--host", HOST]


def two_round_trip_peer(url: str, pool_min: int, pool_max: int) -> AbstractContextManager[Server]:
    """--two-round-trips: the same-work peer with a new order in two round trips (psycopg's
    pipeline mode: BEGIN and authenticate, then the order's statement and COMMIT)."""
    command = [*BARE_COMMAND, "--same-work", "--pipelined"]
    return running_server(
        "same-2rt", command, bare_peer_env(url, pool_min, pool_max), our_headers()
    )


def start_servers(stack: ExitStack, url: str, pool_min: int, pool_max: int) -> dict[str, Server]:
    """Ours and the three peers, by the key of their runs, each on a port of its own."""
    bare_env = bare_peer_env(url, pool_min, pool_max)
    # As the seed ran it: `uvicorn main:app` (its access log on, as ours is), its own pool.
    seed_env = {"SEED_DATABASE_URL": "postgresql+psycopg2://" + libpq_url(url).split("://", 1)[1]}
    seed_command = [str(BIN / "uvicorn"), "--app-dir", str(SEED000), "main:app", "--host", HOST]
    bare_command = BARE_COMMAND
    starts = {
        "ours": our_server(url),
        "bare": running_server("bare", bare_command, bare_env, {}),
        "same_work": running_server(
            "same", [*bare_command, "--same-work"], bare_env, our_headers()
        ),
        # No /health/ready: an unknown order answers 200 once the database is reachable.
        "seed000": running_server(
            "seed000", seed_command, seed_env, {}, api_root="", ready_path="/orders/0"
        ),
    }
    return {key: stack.enter_context(start) for key, start in starts.items()}


def run_scenario(
    wrk: str,
    servers: dict[str, Server],
    database: DatabaseCpu,
    scenario: Scenario,
    settings: tuple[WrkSettings, WrkSettings, int],
    profile_to: Path | None = None,
    two_round_trips: Callable[[], AbstractContextManager[Server]] | None = None,
) -> dict[str, Any]:
    """Ours at the load's and at the light load's connections and each peer at the load's,
    taking turns (`take_turns`); then ours sampled by py-spy at the load's, with
    `profile_to`. With `two_round_trips`, the same-work peer in two round trips first, alone:
    its pool and seed 000's do not fit PostgreSQL's connections together."""
    load, light, rounds = settings
    runs: Runs = {}
    profile: dict[str, Any] = {}
    if two_round_trips is not None and scenario.two_round_trips:
        with two_round_trips() as peer:
            runs["same_work_2rt"] = measure(
                wrk, (peer, database), scenario, {}, load, "same_work_2rt"
            )
    turns: dict[str, Turn] = {}
    for key, server in servers.items():
        if key == "seed000" and not scenario.seed000:
            continue
        extra_env = scenario.setup(server) if scenario.setup else {}
        turns[key] = (server, extra_env, load)
        if key == "ours":
            turns["ours_light"] = (server, extra_env, light)
    runs |= take_turns(wrk, database, scenario, turns, rounds)
    if profile_to is not None:
        ours, extra_env, _ = turns["ours"]
        profile = profile_ours(wrk, ours, scenario, extra_env, load, profile_to)
    row = scenario_row(scenario, runs, load.connections, light.connections)
    return {**row, "profile": profile} if profile else row


def take_turns(
    wrk: str, database: DatabaseCpu, scenario: Scenario, turns: dict[str, Turn], rounds: int
) -> Runs:
    """The runs of `turns` taking turns, `rounds` times: each round measures every run for
    its duration ÷ rounds (whole seconds), in an order that moves on by one each round, and a
    run's figure is its rounds combined (`combined`). This machine's speed drifts by a third
    from one minute to the next (other tenants), so runs measured one after another, a minute
    apart, compared the machine's moments as much as the servers; taking turns, ours and its
    peers share them. Each server is warmed up once, before the first round."""
    warmed: set[str] = set()
    for server, extra_env, settings in turns.values():
        if settings.warmup_s > 0 and server.name not in warmed:
            run_wrk(wrk, server, scenario, extra_env, settings, settings.warmup_s)
            warmed.add(server.name)
    labels = list(turns)
    parts: dict[str, list[RunResult]] = {label: [] for label in labels}
    for turn in range(rounds):
        first = turn % len(labels)
        for label in labels[first:] + labels[:first]:
            server, extra_env, settings = turns[label]
            # Warmed up above: a turn is measured only.
            seconds = max(1, round(settings.duration_s / rounds))
            share = replace(settings, duration_s=seconds, warmup_s=0)
            target = (server, database)
            name = f"{label} {turn + 1}/{rounds}" if rounds > 1 else label
            parts[label].append(measure(wrk, target, scenario, extra_env, share, name))
    return {label: combined(done) for label, done in parts.items()}


def combined(rounds: list[RunResult]) -> RunResult:
    """One run's figures from its rounds: req/s over all their requests and time, CPU per
    request over all their requests, errors summed; p50 and p99 the median round's (a stall
    of the machine in one round of three moves one, a tail of ours shows in every round).
    The rounds are kept in `rounds`."""
    if len(rounds) == 1:
        return rounds[0]
    requests = sum(r.requests for r in rounds)
    seconds = sum(r.requests / r.rps for r in rounds if r.rps)

    def per_request(figure: Callable[[RunResult], float | None]) -> float | None:
        values = [(figure(r), r.requests) for r in rounds]
        if any(value is None for value, _ in values):
            return None
        return round(sum(value * n for value, n in values if value is not None) / requests, 3)

    kinds = {kind for r in rounds for kind in r.errors_by_kind}
    return RunResult(
        rps=round(requests / seconds, 1) if seconds else 0.0,
        p50_ms=round(statistics.median(r.p50_ms for r in rounds), 2),
        p99_ms=round(statistics.median(r.p99_ms for r in rounds), 2),
        requests=requests,
        errors=sum(r.errors for r in rounds),
        errors_by_kind={k: sum(r.errors_by_kind.get(k, 0) for r in rounds) for k in kinds},
        connections=rounds[0].connections,
        cpu_ms_per_request=per_request(operator.attrgetter("cpu_ms_per_request")),
        db_cpu_ms_per_request=per_request(operator.attrgetter("db_cpu_ms_per_request")),
        wrk_cpu_ms_per_request=per_request(operator.attrgetter("wrk_cpu_ms_per_request")),
        other_cores=cores_over_time(rounds, "other_cores"),
        idle_cores=cores_over_time(rounds, "idle_cores"),
        rounds=[asdict(r) for r in rounds],
    )


def cores_over_time(rounds: list[RunResult], figure: str) -> float | None:
    """A figure in cores' worth (the rest of the machine's, the idle) over the rounds: over
    their time."""
    spans = [(getattr(r, figure), r.requests / r.rps) for r in rounds if r.rps]
    if not spans or any(cores is None for cores, _ in spans):
        return None
    return round(sum((cores or 0.0) * s for cores, s in spans) / sum(s for _, s in spans), 2)


def rss_check(sizes: dict[str, float]) -> dict[str, Any]:
    largest = max(sizes.values(), default=0.0)
    return {
        "target": "ours RSS MB per worker after the bench",
        "value": largest,
        "comparison": "<",
        "bound": RSS_TARGET_MB,
        "result": "PASS" if largest < RSS_TARGET_MB else "FAIL",
    }


def bulk_check(step: dict[str, Any]) -> dict[str, Any]:
    return {
        "target": f"p99 ms of {BULK_UPLOADS} uploads",
        "value": step["p99_ms"],
        "comparison": "<",
        "bound": step["target_p99_ms"],
        "result": step["result"],
    }


def run(args: argparse.Namespace) -> int:
    load = WrkSettings(args.duration, args.warmup, args.connections, args.threads)
    # Ours is warmed up at `load` (take_turns), no second warm-up.
    light = WrkSettings(
        args.duration, 0, args.light_connections, min(args.threads, args.light_connections)
    )
    scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]
    WORK.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    wrk = ensure_wrk()
    # The peers' pools hold as many connections as ours can: pool_size + max_overflow.
    app_settings = Settings()
    pool_min = app_settings.pool_size
    pool_max = app_settings.pool_size + app_settings.pool_max_overflow
    started = datetime.now()
    rows: list[dict[str, Any]] = []
    steps: dict[str, dict[str, Any]] = {}
    scaling: dict[str, Any] = {}
    checks: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        server_url, url = stack.enter_context(bench_database())
        pg_version = postgres_version(server_url)
        servers_stack = stack.enter_context(ExitStack())  # closed before the scaling step
        servers = start_servers(servers_stack, url, pool_min, pool_max)
        database = DatabaseCpu(libpq_url(url))
        stem = results_path(started.date().isoformat()).stem
        rows = [
            run_scenario(
                wrk,
                servers,
                database,
                scenario,
                (load, light, args.rounds),
                RESULTS / f"{stem}-{scenario.name}.pyspy.txt" if args.profile else None,
                partial(two_round_trip_peer, url, pool_min, pool_max)
                if args.two_round_trips
                else None,
            )
            for scenario in scenarios
        ]
        if not args.only or BULK_STEP in args.only:
            steps[BULK_STEP] = time_bulk_snapshots(servers["ours"])
            checks[BULK_STEP] = bulk_check(steps[BULK_STEP])
        rss = {key: rss_mb(server.process.pid) for key, server in servers.items()}
        checks["rss_per_worker"] = rss_check(rss["ours"])
        if args.workers > 1 and (not args.only or SCALING_STEP in args.only):
            scaling = run_scaling(
                wrk,
                (url, database),
                (load, args.rounds),
                args.workers,
                servers_stack.close,
                pool_max,
            )
            checks["workers_scaling"] = scaling_check(scaling)

    report: dict[str, Any] = {
        "date": started.date().isoformat(),
        "started": started.isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "tradeops_from": str(Path(tradeops.__file__).parent),  # another checkout (PYTHONPATH)?
        "machine": {
            "nproc": len(os.sched_getaffinity(0)),
            "cpu_model": cpu_model(),
            "postgresql": pg_version,
            "python": sys.version.split()[0],
            "loadavg_at_end": os.getloadavg()[0],  # other work on the machine makes noise
        },
        "wrk": {**asdict(load), "light_connections": light.connections},
        "pool": {"min_size": pool_min, "max_size": pool_max},
        "scenarios": {row["name"]: {k: v for k, v in row.items() if k != "name"} for row in rows},
        "steps": steps,  # timed against ours only, sequentially
        "scaling": scaling,  # ours with --workers N against 1 worker (empty when skipped)
        "rss_mb_after": rss,  # each server's processes, by pid, before the scaling step
        "checks": checks,  # the targets outside the scenarios
    }
    report["wrk"]["version"] = wrk_version(wrk)
    path = results_path(report["date"])
    path.write_text(json.dumps(report, indent=2) + "\n")
    chart = ""
    if rows:  # only steps (--only scaling): no scenario to chart or tabulate
        write_chart(path.with_suffix(".png"), report)
        chart = f", chart: {path.with_suffix('.png').name}"
        print_runs(rows)
    if scaling:
        print_scaling(scaling)
    print_profiles({row["name"]: row["profile"] for row in rows if row.get("profile")})
    print_checks(rows, checks)
    console.print(f"results: {path.relative_to(ROOT)}{chart}")
    errors = any(row["result"] == "ERRORS" for row in rows)
    return 1 if errors or checks.get("workers_scaling", {}).get("result") == "ERRORS" else 0


def main() -> None:
    args = parse_args()
    try:
        code = run(args)
    except BenchError as error:
        console.print(f"[red]bench failed:[/red] {error}")
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
