"""Load benchmark: our server against a bare Starlette + asyncpg peer, same SQL, same load.

    make bench BENCH_ARGS="--duration 20 --only post_order"

Starts (or uses) PostgreSQL, a fresh migrated database with the demo reference data, our
server and the peer (bench/bare_app.py), then runs every scenario with wrk against ours and
then the peer, and writes bench/results/<date>.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
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
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
WRK_TIMEOUT_SECONDS = 2  # wrk's default; a slower response counts as errors.timeout
READY_TIMEOUT_SECONDS = 60
ORDERS = "/api/v1/orders"
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
    name: str  # "ours" or "bare"
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    headers: dict[str, str]

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
    name: str, command: list[str], env: dict[str, str], headers: dict[str, str]
) -> Iterator[Server]:
    """Start `command --port <free port>`, wait for /health/ready = 200; SIGTERM it at the end."""
    port = free_port()
    command = [*command, "--port", str(port)]
    log = WORK / f"{name}.log"
    console.print(f"starting {name}: {' '.join(command)}  [dim](log: {log})[/dim]")
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(name, port, process, log, headers)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                raise BenchError(f"{name} exited with {process.returncode}:\n{log_tail(log)}")
            try:
                if server.request("GET", "/health/ready")[0] == 200:
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


@dataclass(frozen=True)
class Scenario:
    """One kind of request, run with identical wrk settings against ours and the peer."""

    name: str
    method: str
    path: str  # what the script makes of it: static.lua sends it as is
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)  # to both servers
    script: str = "static.lua"  # in bench/lua
    # Runs before the warm-up, once per server; returns extra environment for the script.
    setup: Callable[[Server], dict[str, str]] | None = None
    target_ratio: float | None = None  # ours/bare req/s the issue asks for
    target_p99_ms: float | None = None  # our p99 latency the issue asks for


def create_orders(count: int) -> Callable[[Server], dict[str, str]]:
    """Setup: create `count` orders through the server's API; BENCH_IDS_FILE lists their ids."""

    def setup(server: Server) -> dict[str, str]:
        body = json.dumps(SEED_ORDER).encode()
        ids = []
        for _ in range(count):
            status, answer = server.request("POST", ORDERS, body)
            if status != 201:
                raise BenchError(f"{server.name}: POST {ORDERS} answered {status}: {answer!r}")
            ids.append(str(json.loads(answer)["id"]))
        ids_file = WORK / f"ids-{server.name}.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        return {"BENCH_IDS_FILE": str(ids_file)}

    return setup


JSON = {"Content-Type": "application/json"}
SCENARIOS = [
    Scenario(
        "post_order", "POST", ORDERS, json.dumps(SEED_ORDER).encode(), JSON, target_ratio=0.60
    ),
    Scenario(
        "get_order",
        "GET",
        ORDERS + "/{id}",
        script="random_id.lua",
        setup=create_orders(1000),
        target_ratio=0.70,
    ),
    Scenario(
        "portfolio_500",
        "GET",
        f"/api/v1/clients/{PORTFOLIO_CLIENT}/portfolio",
        target_p99_ms=20.0,
    ),
]


# --- timed steps (ours only) ----------------------------------------------------------------

SNAPSHOTS = "/api/v1/market-data/snapshots"
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
        "BENCH_PATH": scenario.path,
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
    )


def measure(wrk: str, server: Server, scenario: Scenario, settings: WrkSettings) -> RunResult:
    extra_env = scenario.setup(server) if scenario.setup else {}
    if settings.warmup_s > 0:
        run_wrk(wrk, server, scenario, extra_env, settings, settings.warmup_s)
    result = run_wrk(wrk, server, scenario, extra_env, settings, settings.duration_s)
    note = f"  [red]{result.errors} errors {result.errors_by_kind}[/red]" if result.errors else ""
    console.print(
        f"{scenario.name:<12} {server.name:<5} {result.rps:>9.1f} req/s"
        f"  p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms{note}"
    )
    return result


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


def results_path(day: str) -> Path:
    path, n = RESULTS / f"{day}.json", 1
    while path.exists():
        n += 1
        path = RESULTS / f"{day}-{n}.json"
    return path


def ratio(ours: RunResult, bare: RunResult) -> float:
    return ours.rps / bare.rps if bare.rps else 0.0


def verdict(scenario: Scenario, ours: RunResult, bare: RunResult, same: RunResult) -> str:
    """The issue's targets, against the bare peer; any error in any of the three: ERRORS."""
    if ours.errors or bare.errors or same.errors:
        return "ERRORS"
    met = []
    if scenario.target_ratio is not None:
        met.append(ratio(ours, bare) >= scenario.target_ratio)
    if scenario.target_p99_ms is not None:
        met.append(ours.p99_ms < scenario.target_p99_ms)
    if not met:
        return "-"
    return "PASS" if all(met) else "FAIL"


def target_text(row: dict[str, Any]) -> str:
    targets = []
    if row["target_ratio"] is not None:
        targets.append(f">= {row['target_ratio']:.2f}")
    if row.get("target_p99_ms") is not None:
        targets.append(f"p99 < {row['target_p99_ms']:g} ms")
    return ", ".join(targets) or "-"


def print_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="ours vs bare (Starlette + asyncpg) and vs same-work (bare + our SQL)")
    columns = ["scenario", "ours req/s", "p50 ms", "p99 ms", "bare req/s", "p50 ms", "p99 ms"]
    columns += ["ratio", "target", "result", "same-work req/s", "p99 ms", "ratio"]
    for column in columns:
        table.add_column(column, justify="left" if column == "scenario" else "right")
    colors = {"PASS": "green", "FAIL": "yellow", "ERRORS": "red", "-": "dim"}
    for row in rows:
        ours, bare, same = row["ours"], row["bare"], row["same_work"]
        table.add_row(
            row["name"],
            f"{ours['rps']:.1f}",
            f"{ours['p50_ms']:.2f}",
            f"{ours['p99_ms']:.2f}",
            f"{bare['rps']:.1f}",
            f"{bare['p50_ms']:.2f}",
            f"{bare['p99_ms']:.2f}",
            f"{row['ratio_rps']:.2f}",
            target_text(row),
            f"[{colors[row['result']]}]{row['result']}[/]",
            f"{same['rps']:.1f}",
            f"{same['p99_ms']:.2f}",
            f"{row['ratio_same_work']:.2f}",
        )
    console.print(table)
    for row in rows:
        for side in ("ours", "bare", "same_work"):
            if row[side]["errors"]:
                console.print(
                    f"[red]{row['name']} {side}: {row[side]['errors']} errors "
                    f"{row[side]['errors_by_kind']} (status = non-2xx responses; server log: "
                    f"bench/.work/{side.removesuffix('_work')}.log)[/red]"
                )


# --- main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Load benchmark: ours vs a bare asyncpg app.")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unrecorded warm-up")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="SCENARIO",
        choices=[*(s.name for s in SCENARIOS), BULK_STEP],
    )
    return parser.parse_args()


def run(args: argparse.Namespace) -> int:
    settings = WrkSettings(args.duration, args.warmup, args.connections, args.threads)
    scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]
    WORK.mkdir(exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    wrk = ensure_wrk()
    # The peer's pool holds as many connections as our engine can: pool_size + max_overflow.
    app_settings = Settings()
    pool_min = app_settings.pool_size
    pool_max = app_settings.pool_size + app_settings.pool_max_overflow
    started = datetime.now()
    rows: list[dict[str, Any]] = []
    steps: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        server_url, url = stack.enter_context(bench_database())
        pg_version = postgres_version(server_url)
        ours = stack.enter_context(
            running_server(
                "ours",
                [str(BIN / "tradeops"), "serve", "--workers", "1", "--host", HOST],
                {
                    "TRADEOPS_DATABASE_URL": url,
                    "TRADEOPS_ENV": "test",
                    "TRADEOPS_LOG_FORMAT": "json",
                    "TRADEOPS_ACCESS_LOG": "true",  # part of our real cost
                },
                our_headers(),
            )
        )
        bare = stack.enter_context(
            running_server(
                "bare",
                [str(BIN / "python"), str(BENCH / "bare_app.py"), "--host", HOST],
                {
                    "BARE_DATABASE_URL": libpq_url(url),
                    "BARE_POOL_MIN_SIZE": str(pool_min),
                    "BARE_POOL_MAX_SIZE": str(pool_max),
                },
                {},
            )
        )
        same = stack.enter_context(
            running_server(
                "same",
                [str(BIN / "python"), str(BENCH / "bare_app.py"), "--same-work", "--host", HOST],
                {
                    "BARE_DATABASE_URL": libpq_url(url),
                    "BARE_POOL_MIN_SIZE": str(pool_min),
                    "BARE_POOL_MAX_SIZE": str(pool_max),
                },
                our_headers(),
            )
        )
        for scenario in scenarios:
            ours_result = measure(wrk, ours, scenario, settings)
            bare_result = measure(wrk, bare, scenario, settings)
            same_result = measure(wrk, same, scenario, settings)
            rows.append(
                {
                    "name": scenario.name,
                    "ours": asdict(ours_result),
                    "bare": asdict(bare_result),
                    "same_work": asdict(same_result),
                    "ratio_rps": round(ratio(ours_result, bare_result), 3),
                    "ratio_same_work": round(ratio(ours_result, same_result), 3),
                    "target_ratio": scenario.target_ratio,
                    "target_p99_ms": scenario.target_p99_ms,
                    "result": verdict(scenario, ours_result, bare_result, same_result),
                }
            )
        if not args.only or BULK_STEP in args.only:
            steps[BULK_STEP] = time_bulk_snapshots(ours)

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
        },
        "wrk": {**asdict(settings), "version": wrk_version(wrk)},
        "pool": {"min_size": pool_min, "max_size": pool_max},
        "scenarios": {row["name"]: {k: v for k, v in row.items() if k != "name"} for row in rows},
        "steps": steps,  # timed against ours only, sequentially
    }
    path = results_path(report["date"])
    path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows)
    console.print(f"results: {path.relative_to(ROOT)}")
    return 1 if any(row["result"] == "ERRORS" for row in rows) else 0


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
