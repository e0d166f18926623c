"""How long verifying the audit trail takes, and what it costs the other requests meanwhile.

    python bench/audit_verify.py [--events 1000000] [--after-checkpoint 10000] [--port 56410]

In a scratch database it creates (and drops at the end) on the PostgreSQL server of
TRADEOPS_BENCH_SERVER_URL (default: that of TRADEOPS_TEST_DATABASE_URL), it writes `--events`
audit events over 10,000 streams, chained with the hashes the database trigger would compute
(computed here and loaded by COPY, which is ~10x faster than a million trigger calls), signs a
checkpoint before the last `--after-checkpoint` of them, and starts `tradeops serve` on it.
Then it times POST /api/v1/audit/verify, incremental (the default) and with full=true, as a
risk officer, while it asks GET /health/live every 50 ms: the latency of those is what the
server's other requests suffer during a verification.
Results: bench/results/<date>-audit-verify.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

from tradeops.audit import service as audit
from tradeops.audit.chain import GENESIS, event_hash
from tradeops.auth.principal import SYSTEM, Role
from tradeops.auth.tokens import TokenService
from tradeops.db import migrate
from tradeops.db.pool import Database
from tradeops.db.uow import run_in_transaction
from tradeops.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
STREAMS = 10_000
AUDIT_KEY = "bench-audit-key-0123456789abcdef0123456789"
SECRET_KEY = "bench-secret-key-0123456789abcdef0123456789"
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def server_url() -> str:
    url = os.environ.get("TRADEOPS_BENCH_SERVER_URL") or os.environ.get(
        "TRADEOPS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://"))
    return urlunsplit(parts._replace(path="/postgres"))


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


class Trail:
    """Events as the trigger chains them: per stream, seq from 1 and prev_hash the last hash."""

    def __init__(self) -> None:
        self.heads: dict[str, tuple[int, str]] = {}
        self.written = 0

    def rows(self, count: int) -> Iterator[str]:
        for _ in range(count):
            n = self.written
            self.written += 1
            stream = f"user:{n % STREAMS}"
            seq, prev_hash = self.heads.get(stream, (0, GENESIS))
            seq += 1
            at = BASE_TIME + timedelta(milliseconds=n)
            after = f'{{"n": {n}}}'  # jsonb's own rendering of {"n": n}
            fields = {
                "stream": stream,
                "seq": seq,
                "at": at,
                "actor": "user:0",
                "api_key_id": None,
                "request_id": f"bench-{n}",
                "action": "user.updated",
                "entity": "user",
                "entity_id": str(n % STREAMS),
            }
            hashed = event_hash(prev_hash=prev_hash, before_text=None, after_text=after, **fields)  # type: ignore[arg-type]
            self.heads[stream] = (seq, hashed)
            yield (
                "\t".join(
                    [
                        stream,
                        str(seq),
                        at.isoformat(),
                        "user:0",
                        "\\N",
                        f"bench-{n}",
                        "user.updated",
                        "user",
                        str(n % STREAMS),
                        "\\N",
                        after,
                        prev_hash,
                        hashed,
                    ]
                )
                + "\n"
            )


def load(url: str, trail: Trail, count: int) -> None:
    """COPY `count` more events (triggers off: the rows carry their chain already)."""
    with psycopg.connect(url, autocommit=False) as conn:
        conn.execute("SET session_replication_role = replica")
        columns = (
            "stream, seq, at, actor, api_key_id, request_id, action, entity, entity_id,"
            " before, after, prev_hash, hash"
        )
        with conn.cursor().copy(f"COPY audit_events ({columns}) FROM STDIN") as copy:
            buffer = io.StringIO()
            for number, row in enumerate(trail.rows(count), 1):
                buffer.write(row)
                if number % 50_000 == 0:
                    copy.write(buffer.getvalue())
                    buffer = io.StringIO()
            copy.write(buffer.getvalue())
        conn.execute("DELETE FROM audit_stream_heads")
        with conn.cursor().copy("COPY audit_stream_heads (stream, seq, hash) FROM STDIN") as copy:
            for stream, (seq, hashed) in trail.heads.items():
                copy.write_row((stream, seq, hashed))
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE audit_events")
        conn.execute("VACUUM ANALYZE audit_stream_heads")


def sign_checkpoint(url: str) -> int:
    settings = Settings(env="test", audit_key=AUDIT_KEY, _env_file=None)  # type: ignore[call-arg]

    async def sign() -> int:
        db = Database(settings, url)
        try:
            made = await run_in_transaction(
                db,
                SYSTEM,
                lambda uow: audit.create_checkpoint(
                    uow, SYSTEM, AUDIT_KEY.encode(), settle_seconds=0
                ),
            )
        finally:
            await db.dispose()
        assert made is not None
        return made.upto_id

    return asyncio.run(sign())


def risk_officer_token(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO users (email, name, role, password_hash, active)"
            " VALUES ('risk@bench.bank', 'Bench Risk', 'risk', 'x', true) RETURNING id"
        ).fetchone()
    assert row is not None
    settings = Settings(env="test", secret_key=SECRET_KEY, _env_file=None)  # type: ignore[call-arg]
    token, _ = TokenService(settings).issue(int(row[0]), Role.RISK)
    return token


def start_server(url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TRADEOPS_DATABASE_URL": url,
        "TRADEOPS_ENV": "test",
        "TRADEOPS_AUDIT_KEY": AUDIT_KEY,
        "TRADEOPS_SECRET_KEY": SECRET_KEY,
        "TRADEOPS_MAINTENANCE": "false",
        "TRADEOPS_ACCESS_LOG": "false",
        "TRADEOPS_LOG_LEVEL": "WARNING",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tradeops.cli", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    process.terminate()
    raise RuntimeError(f"the server did not start; see {log}")


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def live_latencies(http: httpx.AsyncClient, until: asyncio.Future[Any]) -> list[float]:
    latencies = []
    while not until.done():
        asked = time.perf_counter()
        answer = await http.get("/health/live")
        latencies.append(time.perf_counter() - asked)
        assert answer.status_code == 200
        await asyncio.sleep(0.05)
    return latencies


async def timed_verification(port: int, token: str, full: bool) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    async with (
        httpx.AsyncClient(base_url=base, timeout=600) as http,
        httpx.AsyncClient(base_url=base, timeout=10) as probe,
    ):
        idle = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(2.0, idle.set_result, None)
        baseline = await live_latencies(probe, idle)
        started = time.perf_counter()
        verifying = asyncio.ensure_future(
            http.post(
                "/api/v1/audit/verify",
                params={"full": "true"} if full else {},
                headers={"Authorization": f"Bearer {token}"},
            )
        )
        during = await live_latencies(probe, verifying)
        seconds = time.perf_counter() - started
        answer = await verifying
    report = answer.json()
    assert answer.status_code == 200 and report["ok"], report
    return {
        "mode": "full" if full else "incremental",
        "seconds": round(seconds, 2),
        "events_checked": report["events_checked"],
        "events_per_second": round(report["events_checked"] / seconds),
        "streams_checked": report["streams_checked"],
        "checkpoints_checked": report["checkpoints_checked"],
        "health_live_idle": summary(baseline),
        "health_live_during": summary(during),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--after-checkpoint", type=int, default=10_000)
    parser.add_argument("--port", type=int, default=56410)
    args = parser.parse_args()
    server = server_url()
    name = f"tradeops_bench_verify_{os.getpid()}"
    url = with_database(server, name)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    process = None
    try:
        migrate.upgrade(url)
        trail = Trail()
        started = time.perf_counter()
        load(url, trail, args.events - args.after_checkpoint)
        upto = sign_checkpoint(url)
        load(url, trail, args.after_checkpoint)
        loaded = time.perf_counter() - started
        print(f"{args.events} events loaded and signed up to {upto} in {loaded:.0f} s", flush=True)
        token = risk_officer_token(url)
        process = start_server(url, args.port, Path(f"/tmp/{name}-server.log"))
        runs = []
        for full in (False, True):
            run = asyncio.run(timed_verification(args.port, token, full))
            print(json.dumps(run), flush=True)
            runs.append(run)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "events": args.events,
        "streams": STREAMS,
        "events_after_checkpoint": args.after_checkpoint,
        "batch": Settings(_env_file=None).audit_verify_batch,  # type: ignore[call-arg]
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_end": [round(load, 1) for load in os.getloadavg()],
        },
        "note": "one API process (tradeops serve), PostgreSQL on the same host, shared CPUs",
        "runs": runs,
    }
    out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d}-audit-verify.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
