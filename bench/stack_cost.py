"""What our stack costs per request, in this process's CPU, without a network or a load tool.

The app runs in-process, called as ASGI with no client library in between (httpx's ASGI
transport costs as much CPU as a third of our stack), against a database of its own on the server of
TRADEOPS_TEST_DATABASE_URL, with the access log on (written to /dev/null) and metrics as in
production. For each endpoint: N requests one after another, `time.process_time()` over them
divided by N, in µs per request, best of --runs (the machine is shared; the least disturbed
run is the closest to what the code costs). PostgreSQL's CPU is not counted in it (another
process); the driver's is, as the same-work peer of `make bench` pays it too. PostgreSQL's is
shown beside it when the server runs on this machine: the CPU its backends for the bench's
database used over the same requests (on a shared server, only those backends count).
--profile N runs each endpoint once more under cProfile and prints the Python function calls
per request (a measure other processes on a busy machine do not disturb) and the top N
functions.

    TRADEOPS_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        uv run --frozen python bench/stack_cost.py --requests 2000 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import process_cpu
from starlette.types import ASGIApp, Message
from tests.conftest import drop_database
from tests.factories import SEED_ORDER, approved_order, make_cast, make_reference_data
from tests.owner import owner_engine_on

from tradeops.app import create_app
from tradeops.db import migrate
from tradeops.db.embedded import ensure_database
from tradeops.observability import configure_logging
from tradeops.settings import Settings

ORDERS = "/api/v1/orders"


def a_fill(external_id: str) -> dict[str, str]:
    return {
        "quantity": "1",
        "price": "192",
        "venue": "XNAS",
        "executed_at": "2026-11-23T14:30:05.125Z",
        "external_id": external_id,
    }


class Call:
    """One request, sent straight to the ASGI app: (status, body)."""

    def __init__(self, app: ASGIApp, method: str, path: str, headers: dict[str, str]) -> None:
        self.app = app
        self.method = method
        self.path, _, self.query = path.partition("?")
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, body: bytes = b"") -> tuple[int, bytes]:
        headers = [*self.headers, (b"host", b"bench")]
        if body:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": self.query.encode(),
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1234),
            "server": ("bench", 80),
        }
        sent = False
        status, chunks = 0, []

        async def receive() -> Message:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # a client that stays connected
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


class OwnBody(Call):
    """A call that sends a body of its own, whatever the run's (each fill its own id)."""

    def __init__(self, call: Call, body: bytes) -> None:
        super().__init__(call.app, call.method, call.path, {})
        self.headers, self.body = call.headers, body

    async def __call__(self, body: bytes = b"") -> tuple[int, bytes]:
        return await super().__call__(self.body)


# The calls of one measured run, one a request: the same call again, or (a review) a fresh
# order's each, made before the clock starts.
Calls = Callable[[int], Awaitable[list[Call]]]


def again(call: Call) -> Calls:
    async def calls(count: int) -> list[Call]:
        return [call] * count

    return calls


class Backends:
    """CPU seconds PostgreSQL's backends for one database have used (None when the server
    is not on this machine): those connected at the start and the end of a measure, which
    with a warm pool are all that served it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def pids(self) -> set[int]:
        with psycopg.connect(self.url) as connection:
            rows = connection.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        return {row[0] for row in rows}

    def cpu(self, pids: set[int]) -> dict[int, float]:
        return {pid: used for pid in pids if (used := process_cpu(pid)) is not None}


async def measure(
    calls: Calls,
    body: bytes,
    count: int,
    expected: int,
    backends: Backends,
    profiler: cProfile.Profile | None = None,
) -> tuple[float, float | None]:
    """µs of this process's CPU per request (profiled, with a profiler), and of PostgreSQL's
    backends (None if not on this machine)."""
    each = await calls(count)
    before = backends.cpu(backends.pids())
    started = time.process_time()
    if profiler is not None:
        profiler.enable()
    for call in each:
        status, answer = await call(body)
        if status != expected:
            raise RuntimeError(f"{status}: {answer!r}")
    if profiler is not None:
        profiler.disable()
    ours = (time.process_time() - started) / count * 1e6
    after = backends.cpu(backends.pids() | set(before))
    if not after:
        return ours, None
    used = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
    return ours, used / count * 1e6


async def main(arguments: argparse.Namespace) -> None:
    server = os.environ["TRADEOPS_TEST_DATABASE_URL"]
    url = ensure_database(server, f"tradeops_stack_cost_{uuid.uuid4().hex[:8]}")
    try:
        migrate.upgrade(url)
        await run(url, arguments)
    finally:
        drop_database(server, url)


async def run(url: str, arguments: argparse.Namespace) -> None:
    settings = Settings(env="test", log_format="json", maintenance=False, _env_file=None)  # type: ignore[call-arg]
    with open(os.devnull, "w") as devnull:  # noqa: ASYNC230 - once, before measuring
        configure_logging(settings, stream=devnull)
        app = create_app(settings, url)
        engine = owner_engine_on(url)
        async with app.router.lifespan_context(app):
            await make_reference_data(engine)
            cast = await make_cast(engine, app.state.tokens)
            backends = Backends(url)
            agent = cast["agent"]
            created = await Call(app, "POST", ORDERS, agent)(orjson.dumps(SEED_ORDER))
            order_id = orjson.loads(created[1])["id"]
            submit = Call(app, "POST", ORDERS, cast["trader"])

            async def reviews(count: int) -> list[Call]:
                """Fresh orders of one trader, each to be reviewed by another."""
                made = [await submit(orjson.dumps(SEED_ORDER)) for _ in range(count)]
                return [
                    Call(app, "POST", f"{ORDERS}/{orjson.loads(body)['id']}/review", reviewer)
                    for _, body in made
                ]

            async def keyed_reviews(count: int) -> list[Call]:
                """Fresh orders of one trader, each to be reviewed by another under a key."""
                calls = await reviews(count)
                for call in calls:
                    call.headers.append((b"idempotency-key", uuid.uuid4().hex.encode()))
                return calls

            async def keyed(count: int) -> list[Call]:
                """New orders, each under an Idempotency-Key of its own."""
                return [
                    Call(app, "POST", ORDERS, agent | {"Idempotency-Key": uuid.uuid4().hex})
                    for _ in range(count)
                ]

            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://bench"
            ) as http:
                filled = await approved_order(http, cast, engine, quantity=1_000_000)
            await engine.dispose()
            fill = Call(app, "POST", f"{ORDERS}/{filled}/executions", cast["admin"])

            async def fills(count: int) -> list[Call]:
                """Fills of 1 of one large order, each with an external id of its own."""
                return [OwnBody(fill, orjson.dumps(a_fill(uuid.uuid4().hex))) for _ in range(count)]

            async def amendments(count: int) -> list[Call]:
                """Fresh orders of one trader, each to be amended by them."""
                made = [await submit(orjson.dumps(SEED_ORDER)) for _ in range(count)]
                return [
                    Call(app, "PATCH", f"{ORDERS}/{orjson.loads(body)['id']}", cast["trader"])
                    for _, body in made
                ]

            reviewer = cast["trader2"]
            order = Call(app, "GET", f"{ORDERS}/{order_id}", agent)
            # A price for GET /market-data/{symbol}.
            price = {
                "symbol": "AAPL",
                "price": "192.55",
                "as_of": "2026-11-23T14:30:00Z",
                "source": "bench",
            }
            published = await Call(app, "POST", "/api/v1/market-data/snapshots", cast["admin"])(
                orjson.dumps({"snapshots": [price]})
            )
            assert published[0] == 201, published
            # A full first page (50) for the list, of the agent's orders, before any other
            # endpoint adds more.
            for _ in range(60):
                await Call(app, "POST", ORDERS, agent)(orjson.dumps(SEED_ORDER))
            endpoints: list[tuple[str, Calls, bytes, int]] = [
                ("GET /orders/{id}", again(order), b"", 200),
                (
                    "GET /market-data/{symbol}",
                    again(Call(app, "GET", "/api/v1/market-data/AAPL", agent)),
                    b"",
                    200,
                ),
                ("GET /orders", again(Call(app, "GET", ORDERS, agent)), b"", 200),
                (
                    "GET /orders?client_id&status",
                    again(Call(app, "GET", f"{ORDERS}?client_id=CUST-1001&status=PENDING", agent)),
                    b"",
                    200,
                ),
                (
                    "POST /orders",
                    again(Call(app, "POST", ORDERS, agent)),
                    orjson.dumps(SEED_ORDER),
                    201,
                ),
                ("POST /orders with an Idempotency-Key", keyed, orjson.dumps(SEED_ORDER), 201),
                ("POST /orders/{id}/review", reviews, b"", 200),
                ("POST /orders/{id}/review with an Idempotency-Key", keyed_reviews, b"", 200),
                ("POST /orders/{id}/executions", fills, b"", 201),
                ("PATCH /orders/{id}", amendments, orjson.dumps({"quantity": "60"}), 201),
            ]
            for name, call, body, expected in endpoints:
                if arguments.only and name not in arguments.only:
                    continue
                await measure(call, body, 50, expected, backends)  # warm up: caches, statements
                runs = [
                    await measure(call, body, arguments.requests, expected, backends)
                    for _ in range(arguments.runs)
                ]
                shown = ", ".join(f"{r:.0f}" for r, _ in runs)
                print(f"{name}: best {min(runs)[0]:.0f} µs CPU per request (runs: {shown})")
                database = [db for _, db in runs if db is not None]
                if database:
                    shown = ", ".join(f"{db:.0f}" for db in database)
                    print(f"{name}: PostgreSQL best {min(database):.0f} µs (runs: {shown})")
                if arguments.profile:
                    profiler = cProfile.Profile()
                    await measure(call, body, arguments.requests, expected, backends, profiler)
                    if arguments.dump:
                        profiler.dump_stats(f"{arguments.dump}.{dump_suffix(name)}.prof")
                    stats = pstats.Stats(profiler).sort_stats(arguments.sort)
                    # Not disturbed by other processes, unlike the CPU time: a steady measure.
                    calls = stats.total_calls / arguments.requests  # type: ignore[attr-defined]
                    print(f"{name}: {calls:.0f} Python function calls per request")
                    stats.print_stats(arguments.profile)


def dump_suffix(endpoint: str) -> str:
    """`POST /orders/{id}/review` as a file name's part: POST_orders_id_review (each endpoint
    its own file; by the method alone, the review's profile overwrote the intake's)."""
    return "_".join(re.findall(r"\w+", endpoint))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", type=int, default=0, help="print the top N functions")
    parser.add_argument(
        "--dump", help="also write each profile to DUMP.<endpoint>.prof (POST_orders_id_review)"
    )
    parser.add_argument("--sort", default="tottime", help="cProfile sort key")
    parser.add_argument(
        "--only", action="append", help="measure this endpoint alone ('GET /orders'); repeatable"
    )
    asyncio.run(main(parser.parse_args()))
