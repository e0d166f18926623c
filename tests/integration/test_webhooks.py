"""Signed notifications (issue 17 item 4): endpoints for admins only, an outbox written with
the order event, delivered by the worker at least once under one webhook-id per message,
each attempt recorded.

The receiver is a real HTTP server on a free local port. It checks every signature with its
own implementation of Standard Webhooks (not ours), refuses the first attempts of every
message, and drops repeats by webhook-id, as a receiver should."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import SEED_ORDER, Cast, bearer, make_api_key, pass_risk_check
from tradeops.db.pool import Database
from tradeops.errors import InvalidRequest
from tradeops.jobs.app import run_worker
from tradeops.jobs.defer import DELIVER_WEBHOOKS, WEBHOOKS_QUEUE
from tradeops.orders import expiry
from tradeops.settings import Settings
from tradeops.webhooks import service
from tradeops.webhooks.signing import sign, verify

API = "/api/v1"
ALL_TYPES = [
    "order.awaiting_approval",
    "order.approved",
    "order.rejected",
    "order.expired",
    "order.filled",
    "order.risk_failed",
]
FI_ORDER = {**SEED_ORDER, "client_id": "CUST-2001"}
PRICES = {
    "snapshots": [
        {"symbol": "AAPL", "price": "192.55", "as_of": "2026-11-23T10:00:00Z", "source": "test"}
    ]
}


# --- the receiver ----------------------------------------------------------------------


def standard_webhooks_valid(secret: str, headers: Any, body: bytes) -> bool:
    """The receiver's check, written from the spec: HMAC-SHA256 keyed with the base64-decoded
    secret over `id.timestamp.body`, any `v1,` signature of the header, a fresh timestamp."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    webhook_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > 300:
        return False
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    return any(
        hmac.compare_digest(part[3:], expected)
        for part in headers["webhook-signature"].split(" ")
        if part.startswith("v1,")
    )


@dataclass
class Receiver:
    """What arrived: every request, and the messages accepted (first 2xx per webhook-id)."""

    secrets: dict[str, str] = field(default_factory=dict)  # path -> whsec_
    refuse_first: int = 0  # answer 500 to this many attempts of each message
    slow_first_accept: float = 0.0  # sleep before the first 2xx of a message (a lost answer)
    seen: Counter[str] = field(default_factory=Counter)
    accepted: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    bodies: dict[str, set[bytes]] = field(default_factory=dict)
    received_at: dict[str, float] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    bad_signatures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, path: str, headers: Any, body: bytes) -> tuple[int, float]:
        with self.lock:
            if not standard_webhooks_valid(self.secrets[path], headers, body):
                self.bad_signatures += 1
                return 400, 0.0
            webhook_id = headers["webhook-id"]
            self.seen[webhook_id] += 1
            self.bodies.setdefault(webhook_id, set()).add(body)
            if self.seen[webhook_id] <= self.refuse_first:
                return 500, 0.0
            if webhook_id in self.accepted:
                self.duplicates.append(webhook_id)  # at least once: dropped by its id
                return 200, 0.0
            self.accepted[webhook_id] = (path, json.loads(body))
            self.received_at[webhook_id] = time.time()
            slow = self.slow_first_accept and self.seen[webhook_id] == self.refuse_first + 1
            return 200, self.slow_first_accept if slow else 0.0

    def events(self, path: str) -> Counter[tuple[int, str, int]]:
        """The messages accepted on a path, as (order, type, order event seq)."""
        return Counter(
            (body["data"]["order_id"], body["type"], body["data"]["event"]["seq"])
            for where, body in self.accepted.values()
            if where == path
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(receiver: Receiver, port: int) -> Iterator[None]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            status, delay = receiver.handle(self.path, self.headers, body)
            time.sleep(delay)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


# --- arranging -------------------------------------------------------------------------


@pytest.fixture
def quick(settings: Settings) -> Settings:
    """Retries after 50 ms, doubling, up to 30 attempts (an answer within the default 5 s:
    on a loaded machine a shorter timeout sends a message again, as it should)."""
    return settings.model_copy(update={"webhook_backoff_seconds": 0.05, "webhook_max_attempts": 30})


@pytest.fixture
async def db(quick: Settings, database_url: str) -> AsyncIterator[Database]:
    database = Database(quick, database_url)
    yield database
    await database.dispose()


async def register(
    client: httpx.AsyncClient, cast: Cast, url: str, desks: list[str], types: list[str] = ALL_TYPES
) -> dict[str, Any]:
    body = {"url": url, "event_types": types, "desks": desks}
    response = await client.post(f"{API}/webhooks", json=body, headers=cast["admin"])
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert created["secret"].startswith("whsec_")
    return created


async def call(
    client: httpx.AsyncClient, who: dict[str, str], method: str, path: str, **kw: Any
) -> Any:
    response = await client.request(method, f"{API}{path}", headers=who, **kw)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def submit(client: httpx.AsyncClient, cast: Cast, who: str, body: dict[str, Any]) -> int:
    return int((await call(client, cast[who], "POST", "/orders", json=body))["id"])


async def fill(client: httpx.AsyncClient, cast: Cast, order_id: int, quantity: str, n: int) -> None:
    execution = {
        "quantity": quantity,
        "price": "192.5",
        "venue": "XNAS",
        "executed_at": "2026-11-23T14:30:00Z",
        "external_id": f"XNAS-{order_id}-{n}",
    }
    await call(client, cast["admin"], "POST", f"/orders/{order_id}/executions", json=execution)


async def owner_scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.begin() as conn:
        return await conn.scalar(text(sql), params)


async def deliver_until_settled(
    db: Database, settings: Settings, engine: AsyncEngine, within: float = 30.0
) -> None:
    """Run the worker's delivery, as its sweep does, until nothing is pending."""
    deadline = time.monotonic() + within
    while await owner_scalar(
        engine, "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
    ):
        assert time.monotonic() < deadline, "deliveries still pending"
        await service.deliver_due(db, settings)
        await asyncio.sleep(0.05)


# --- the test ------------------------------------------------------------------


async def test_every_event_arrives_signed_and_exactly_once_by_id_after_refused_attempts(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    database_url: str,
    db: Database,
    quick: Settings,
) -> None:
    receiver = Receiver(refuse_first=2)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    eq = await register(client, cast, f"{base}/eq", ["EQ-US"])
    fi = await register(client, cast, f"{base}/fi", ["FI-EU"], ["order.awaiting_approval"])
    receiver.secrets = {"/eq": eq["secret"], "/fi": fi["secret"]}
    await call(client, cast["admin"], "POST", "/market-data/snapshots", json=PRICES)

    async def run_jobs() -> None:  # the worker: risk checks, and the deliveries' nudges
        await run_worker(database_url, wait=False, install_signal_handlers=False, settings=quick)

    with serving(receiver, port):
        # 1: checked, then reviewed (awaiting approval), approved, filled in two parts.
        first = await submit(client, cast, "trader", SEED_ORDER)
        await run_jobs()
        await call(client, cast["trader2"], "POST", f"/orders/{first}/review")
        await call(client, cast["approver"], "POST", f"/orders/{first}/approve")
        await fill(client, cast, first, "20", 1)
        await fill(client, cast, first, "30", 2)
        # 2: reviewed before its check, so the passing check makes it await approval; rejected.
        second = await submit(client, cast, "trader", SEED_ORDER)
        await call(client, cast["trader2"], "POST", f"/orders/{second}/review")
        await run_jobs()
        await call(
            client, cast["approver"], "POST", f"/orders/{second}/reject", json={"reason": "no"}
        )
        # 3: a price far from the market fails its check.
        third = await submit(client, cast, "trader", {**SEED_ORDER, "price": 300})
        # 4: expired by the expiry sweep, its time having passed.
        fourth = await submit(client, cast, "trader", SEED_ORDER)
        async with owner_engine.begin() as conn:
            await conn.execute(
                text("UPDATE orders SET expire_at = now() - interval '1 second' WHERE id = :id"),
                {"id": fourth},
            )
        assert await expiry.expire_due_orders(db, 10) == [fourth]
        # A bust of the first order's second fill: a correction, no webhook event of its own.
        second_fill = await owner_scalar(
            owner_engine, "SELECT max(id) FROM executions WHERE order_id = :id", id=first
        )
        await call(
            client,
            cast["admin"],
            "POST",
            f"/orders/{first}/executions/{second_fill}/bust",
            json={"reason": "venue busted the trade"},
        )
        # 5: FI-EU, to the FI-EU endpoint only.
        fifth = await submit(client, cast, "trader_fi", FI_ORDER)
        await run_jobs()
        await call(client, cast["trader_fi"], "POST", f"/orders/{fifth}/review")
        await run_jobs()
        await deliver_until_settled(db, quick, owner_engine)

    events = await _order_events(owner_engine)
    assert receiver.bad_signatures == 0
    assert receiver.events("/eq") == Counter(
        {
            (first, "order.awaiting_approval", events[first, "REVIEWED"]): 1,
            (first, "order.approved", events[first, "APPROVED"]): 1,
            (first, "order.filled", events[first, "PARTIALLY_FILLED"]): 1,
            (first, "order.filled", events[first, "FILLED"]): 1,
            (second, "order.awaiting_approval", events[second, "RISK_CHECKED"]): 1,
            (second, "order.rejected", events[second, "REJECTED"]): 1,
            (third, "order.risk_failed", events[third, "RISK_CHECKED"]): 1,
            (fourth, "order.expired", events[fourth, "EXPIRED"]): 1,
        }
    )
    assert receiver.events("/fi") == Counter(
        {(fifth, "order.awaiting_approval", events[fifth, "REVIEWED"]): 1}
    )
    # Refused twice, accepted on the third attempt: one webhook-id, the same body each time.
    assert set(receiver.seen.values()) == {3}
    assert all(len(bodies) == 1 for bodies in receiver.bodies.values())
    # Each attempt is recorded, and only admins read them.
    page = await call(client, cast["admin"], "GET", f"/webhooks/{eq['id']}/deliveries")
    assert len(page["items"]) == 8
    for delivery in page["items"]:
        assert delivery["status"] == "delivered"
        assert delivery["webhook_id"] in receiver.accepted
        assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 500, 200]
        assert [a["attempt"] for a in delivery["attempt_log"]] == [1, 2, 3]
        assert delivery["attempts"] == 3 and delivery["next_attempt_at"] is None
    approved = next(d for d in page["items"] if d["event_type"] == "order.approved")
    assert approved["payload"]["data"] | {"event": None} == approved["payload"]["data"] | {
        "order_id": first,
        "desk": "EQ-US",
        "client_id": "CUST-1001",
        "symbol": "AAPL",
        "status": "APPROVED",
        "risk_status": "PASSED",
        "quantity": "50",
        "price": "192.55",
        "event": None,
    }


async def _order_events(engine: AsyncEngine) -> dict[tuple[int, str], int]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT order_id, type, seq FROM order_events"))
        return {(row.order_id, row.type): row.seq for row in rows}


# --- a receiver down for a while -------------------------------------------------------


async def test_a_receiver_that_was_down_receives_everything_afterwards_each_id_once(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    db: Database,
    quick: Settings,
) -> None:
    """The issue's "down for a minute", shortened: down for 3 s (every attempt refused at
    the TCP level, retried with backoff), then up, with its first answers too slow (the
    worker times out and sends the same message again). Everything arrives; the repeats carry
    the webhook-id of the first, and dropping them by it leaves each event exactly once."""
    settings = quick.model_copy(
        update={"webhook_backoff_seconds": 0.2, "webhook_timeout_seconds": 1.0}
    )
    port = free_port()
    created = await register(
        client, cast, f"http://127.0.0.1:{port}/hook", ["EQ-US"], ["order.awaiting_approval"]
    )
    receiver = Receiver(secrets={"/hook": created["secret"]}, slow_first_accept=1.5)
    orders = [await submit(client, cast, "trader", SEED_ORDER) for _ in range(5)]
    for order_id in orders:
        await pass_risk_check(owner_engine, order_id)
        await call(client, cast["trader2"], "POST", f"/orders/{order_id}/review")

    down_until = time.monotonic() + 3.0
    while time.monotonic() < down_until:
        await service.deliver_due(db, settings)
        await asyncio.sleep(0.1)
    refused = await owner_scalar(
        owner_engine, "SELECT count(*) FROM webhook_attempts WHERE status_code IS NULL"
    )
    assert refused >= 2 * len(orders), "every delivery was tried while the receiver was down"
    with serving(receiver, port):
        await deliver_until_settled(db, settings, owner_engine)

    assert receiver.bad_signatures == 0
    assert sorted(order for order, _, _ in receiver.events("/hook")) == orders
    assert set(receiver.events("/hook").values()) == {1}
    assert sorted(set(receiver.duplicates)) == sorted(receiver.accepted), "each sent again"
    assert all(len(bodies) == 1 for bodies in receiver.bodies.values())
    timeouts = await owner_scalar(
        owner_engine, "SELECT count(*) FROM webhook_attempts WHERE error LIKE '%Timeout%'"
    )
    assert timeouts >= len(orders)


async def test_two_workers_at_once_send_each_message_once(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, db: Database, quick: Settings
) -> None:
    """SKIP LOCKED and the lease: two workers delivering at the same time never take the same
    delivery, so a receiver that always answers at once gets no repeat."""
    port = free_port()
    created = await register(
        client, cast, f"http://127.0.0.1:{port}/hook", ["EQ-US"], ["order.awaiting_approval"]
    )
    receiver = Receiver(secrets={"/hook": created["secret"]})
    orders = [await submit(client, cast, "trader", SEED_ORDER) for _ in range(12)]
    for order_id in orders:
        await pass_risk_check(owner_engine, order_id)
        await call(client, cast["trader2"], "POST", f"/orders/{order_id}/review")
    small_batches = quick.model_copy(update={"webhook_batch": 2})
    with serving(receiver, port):
        sent = await asyncio.gather(
            service.deliver_due(db, small_batches), service.deliver_due(db, small_batches)
        )
    assert sum(sent) == len(orders)
    assert receiver.duplicates == [] and set(receiver.seen.values()) == {1}
    assert sorted(order for order, _, _ in receiver.events("/hook")) == orders
    # The deliveries page by page, newest first.
    pages, after = [], ""
    while after is not None:
        page = await call(
            client, cast["admin"], "GET", f"/webhooks/{created['id']}/deliveries?limit=5{after}"
        )
        pages.append([d["order_id"] for d in page["items"]])
        after = page["next_cursor"] and f"&after={page['next_cursor']}"
    assert [len(p) for p in pages] == [5, 5, 2]
    assert [o for p in pages for o in p] == sorted(orders, reverse=True)


async def test_a_hanging_receiver_holds_no_lock_and_never_delays_an_order(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, db: Database, quick: Settings
) -> None:
    """While a POST hangs, no transaction is open on its delivery and orders move on."""
    port = free_port()
    created = await register(
        client, cast, f"http://127.0.0.1:{port}/hook", ["EQ-US"], ["order.awaiting_approval"]
    )
    receiver = Receiver(secrets={"/hook": created["secret"]}, slow_first_accept=3.0)
    first = await submit(client, cast, "trader", SEED_ORDER)
    await pass_risk_check(owner_engine, first)
    await call(client, cast["trader2"], "POST", f"/orders/{first}/review")
    second = await submit(client, cast, "trader", SEED_ORDER)
    await pass_risk_check(owner_engine, second)
    with serving(receiver, port):
        delivering = asyncio.create_task(service.deliver_due(db, quick))
        while not receiver.seen:
            await asyncio.sleep(0.05)
        async with owner_engine.begin() as conn:  # would fail if the worker held the row
            locked = await conn.scalar(
                text("SELECT count(*) FROM (SELECT FROM webhook_deliveries FOR UPDATE NOWAIT) AS d")
            )
        began = time.monotonic()
        await call(client, cast["trader2"], "POST", f"/orders/{second}/review")
        await call(client, cast["approver"], "POST", f"/orders/{second}/approve")
        took = time.monotonic() - began
        assert not delivering.done(), "the receiver still hangs"
        await delivering
    assert locked == 1
    assert took < 2.0, f"the order waited {took:.1f} s"


# --- the outbox --------------------------------------------------------------------------


async def test_the_outbox_commits_and_rolls_back_with_the_event_and_nudges_the_worker(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await register(client, cast, "http://127.0.0.1:9/x", ["EQ-US"])
    order_id = await submit(client, cast, "trader", SEED_ORDER)
    expire = text(
        "INSERT INTO order_events (order_id, desk_id, seq, type, actor)"
        " SELECT id, desk_id, 7, 'EXPIRED', 'system:expiry' FROM orders WHERE id = :id"
    )
    async with owner_engine.connect() as conn, conn.begin() as rolled_back:
        await conn.execute(expire, {"id": order_id})
        assert await conn.scalar(text("SELECT count(*) FROM webhook_deliveries")) == 1
        await rolled_back.rollback()
    assert await owner_scalar(owner_engine, "SELECT count(*) FROM webhook_deliveries") == 0
    async with owner_engine.begin() as conn:
        await conn.execute(expire, {"id": order_id})
    assert await owner_scalar(owner_engine, "SELECT count(*) FROM webhook_deliveries") == 1
    nudges = await owner_scalar(
        owner_engine,
        "SELECT count(*) FROM procrastinate_jobs WHERE task_name = :task AND queue_name = :queue"
        " AND status = 'todo'",
        task=DELIVER_WEBHOOKS,
        queue=WEBHOOKS_QUEUE,
    )
    assert nudges == 1


async def test_a_delivery_that_never_succeeds_is_given_up_after_the_last_attempt(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, db: Database, quick: Settings
) -> None:
    settings = quick.model_copy(update={"webhook_max_attempts": 3, "webhook_backoff_seconds": 0.01})
    created = await register(client, cast, f"http://127.0.0.1:{free_port()}/x", ["EQ-US"])
    order_id = await submit(client, cast, "trader", SEED_ORDER)
    await pass_risk_check(owner_engine, order_id)
    await call(client, cast["trader2"], "POST", f"/orders/{order_id}/review")
    await deliver_until_settled(db, settings, owner_engine)
    [delivery] = (
        await call(client, cast["admin"], "GET", f"/webhooks/{created['id']}/deliveries")
    )["items"]
    assert delivery["status"] == "failed"
    assert delivery["attempts"] == 3 and len(delivery["attempt_log"]) == 3
    assert delivery["last_status_code"] is None
    assert delivery["last_error"].startswith("ConnectError")


# --- endpoints: who may, what is kept, what is audited --------------------------------

AS_APP = text(
    "SELECT set_config('role', 'tradeops_app', true), set_config('tradeops.user_id', :id, true),"
    " set_config('tradeops.role', :role, true)"
)


async def test_only_a_signed_in_admin_manages_webhooks_and_reads_deliveries(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    created = await register(client, cast, "https://hooks.example.com/tradeops", ["EQ-US"])
    _, admin_key = await make_api_key(owner_engine, "admin@test.bank", ["orders:read"])
    body = {"url": "https://x.example.com/", "event_types": ["order.approved"], "desks": ["EQ-US"]}
    hook = f"/webhooks/{created['id']}"
    for who in ("trader", "trader2", "approver", "risk", "agent", "admin key"):
        headers = bearer(admin_key) if who == "admin key" else cast[who]
        for method, path, json_body in (
            ("GET", "/webhooks", None),
            ("POST", "/webhooks", body),
            ("GET", hook, None),
            ("DELETE", hook, None),
            ("GET", f"{hook}/deliveries", None),
        ):
            response = await client.request(method, f"{API}{path}", json=json_body, headers=headers)
            assert response.status_code == 403, f"{who} {method} {path}: {response.text}"
    assert (await client.get(f"{API}/webhooks")).status_code == 401
    # The database agrees: the application role sees no endpoint but as an admin, and never
    # reads a secret, not even as one.
    async with owner_engine.connect() as conn, conn.begin():
        await conn.execute(AS_APP, {"id": str(cast.ids["trader"]), "role": "trader"})
        assert await conn.scalar(text("SELECT count(*) FROM webhook_endpoints")) == 0
    with pytest.raises(Exception, match="permission denied"):
        async with owner_engine.connect() as conn, conn.begin():
            await conn.execute(AS_APP, {"id": str(cast.ids["admin"]), "role": "admin"})
            await conn.execute(text("SELECT secret FROM webhook_endpoints"))


async def test_the_secret_is_shown_once_and_creation_and_deletion_are_audited(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    created = await register(client, cast, "https://hooks.example.com/t", ["EQ-US", "FI-EU"])
    assert created["desks"] == ["EQ-US", "FI-EU"] and created["created_by"] == "admin@test.bank"
    listed = await call(client, cast["admin"], "GET", "/webhooks")
    assert [w["id"] for w in listed["items"]] == [created["id"]]
    assert "secret" not in listed["items"][0]
    one = await call(client, cast["admin"], "GET", f"/webhooks/{created['id']}")
    assert "secret" not in one
    deleted = await call(client, cast["admin"], "DELETE", f"/webhooks/{created['id']}")
    assert deleted["disabled_at"] is not None
    assert (await call(client, cast["admin"], "GET", "/webhooks"))["items"] == []
    again = await client.delete(f"{API}/webhooks/{created['id']}", headers=cast["admin"])
    assert again.status_code == 404
    trail = await call(client, cast["admin"], "GET", "/audit/events?entity=webhook")
    actions = [e["action"] for e in trail["items"] if e["entity"] == "webhook"]
    assert sorted(actions) == ["webhook.created", "webhook.deleted"]
    assert created["secret"] not in json.dumps(trail)
    stored = await owner_scalar(owner_engine, "SELECT secret FROM webhook_endpoints")
    assert stored == created["secret"]


async def test_deleting_an_endpoint_cancels_what_it_was_owed(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, db: Database, quick: Settings
) -> None:
    created = await register(client, cast, f"http://127.0.0.1:{free_port()}/x", ["EQ-US"])
    order_id = await submit(client, cast, "trader", SEED_ORDER)
    await pass_risk_check(owner_engine, order_id)
    await call(client, cast["trader2"], "POST", f"/orders/{order_id}/review")
    await call(client, cast["admin"], "DELETE", f"/webhooks/{created['id']}")
    assert await service.deliver_due(db, quick) == 0
    [delivery] = (
        await call(client, cast["admin"], "GET", f"/webhooks/{created['id']}/deliveries")
    )["items"]
    assert delivery["status"] == "cancelled" and delivery["attempts"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://files.example.com/x"}, "body.url"),
        ({"url": "https://user:pw@hooks.example.com/x"}, "body.url"),
        ({"event_types": ["order.created"]}, "body.event_types.0"),
        ({"event_types": []}, "body.event_types"),
        ({"desks": ["NO-SUCH"]}, "body.desk"),
        ({"desks": []}, "body.desks"),
    ],
)
async def test_a_webhook_that_cannot_work_is_refused(
    client: httpx.AsyncClient, cast: Cast, body: dict[str, Any], field: str
) -> None:
    valid = {"url": "https://hooks.example.com/x", "event_types": ALL_TYPES, "desks": ["EQ-US"]}
    response = await client.post(f"{API}/webhooks", json=valid | body, headers=cast["admin"])
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]


def test_plain_http_is_refused_in_prod_unless_allowed(settings: Settings) -> None:
    prod = settings.model_copy(update={"env": "prod"})
    assert not prod.webhooks_may_use_http
    assert prod.model_copy(update={"webhook_allow_http": True}).webhooks_may_use_http
    with pytest.raises(InvalidRequest):
        service._checked_url("http://hooks.example.com/x", allow_http=False)
    assert service._checked_url("https://hooks.example.com/x", allow_http=False)


def test_our_signature_is_the_standard_one() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # Standard Webhooks' own test vector
    body = b'{"test": 2432232314}'
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert verify(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, f"v1,x {signature}")
    assert not verify(secret, "msg_other", 1614265330, body, signature)


@pytest.mark.slow
async def test_a_running_worker_retries_on_its_sweep(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    database_url: str,
    quick: Settings,
) -> None:
    """What `tradeops worker` runs: the nudge sends the first attempt, the periodic sweep
    (every 2 s) the retries, which no nudge announces."""
    port = free_port()
    created = await register(
        client, cast, f"http://127.0.0.1:{port}/hook", ["EQ-US"], ["order.awaiting_approval"]
    )
    receiver = Receiver(secrets={"/hook": created["secret"]}, refuse_first=2)
    order_id = await submit(client, cast, "trader", SEED_ORDER)
    await pass_risk_check(owner_engine, order_id)
    worker = asyncio.create_task(
        run_worker(database_url, install_signal_handlers=False, settings=quick)
    )
    try:
        with serving(receiver, port):
            await call(client, cast["trader2"], "POST", f"/orders/{order_id}/review")
            deadline = time.monotonic() + 20
            while not receiver.accepted:
                assert time.monotonic() < deadline, "the retries were not sent"
                await asyncio.sleep(0.1)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    assert list(receiver.seen.values()) == [3]
    sweeps = await owner_scalar(
        owner_engine,
        "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'sweep_webhooks'"
        " AND status = 'succeeded'",
    )
    assert sweeps <= 1, "the sweep deletes its succeeded runs"


# --- latency -----------------------------------------------------------------------------


@pytest.mark.slow
async def test_delivery_latency_from_commit_to_receipt(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    database_url: str,
    settings: Settings,
) -> None:
    """A running worker: the outbox trigger's nudge brings each event within a fraction of
    the 2 s sweep. Printed: p50 and max over 20 events, commit (the API's answer) to receipt."""
    port = free_port()
    created = await register(
        client, cast, f"http://127.0.0.1:{port}/hook", ["EQ-US"], ["order.awaiting_approval"]
    )
    receiver = Receiver(secrets={"/hook": created["secret"]})
    orders = [await submit(client, cast, "trader", SEED_ORDER) for _ in range(20)]
    for order_id in orders:
        await pass_risk_check(owner_engine, order_id)
    worker = asyncio.create_task(
        run_worker(database_url, install_signal_handlers=False, settings=settings)
    )
    committed: dict[int, float] = {}
    try:
        with serving(receiver, port):
            await asyncio.sleep(1.0)  # the worker is listening
            for order_id in orders:
                await call(client, cast["trader2"], "POST", f"/orders/{order_id}/review")
                committed[order_id] = time.time()
                await asyncio.sleep(0.1)
            deadline = time.monotonic() + 20
            while len(receiver.accepted) < len(orders):
                assert time.monotonic() < deadline, "not every event arrived"
                await asyncio.sleep(0.05)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    latency = sorted(
        receiver.received_at[webhook_id] - committed[body["data"]["order_id"]]
        for webhook_id, (_, body) in receiver.accepted.items()
    )
    p50 = statistics.median(latency)
    print(
        f"webhook latency commit→receipt: p50 {p50 * 1000:.0f} ms, max {latency[-1] * 1000:.0f} ms"
    )
    assert p50 < 2.0
