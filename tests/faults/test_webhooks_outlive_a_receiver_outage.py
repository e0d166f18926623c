"""A webhook receiver down for a minute receives everything afterwards (issue 17, item 4).

On the fault suite's stack (`tradeops serve` and `tradeops worker` as processes of their own,
on the suite's own cluster), with the DEFAULT delivery settings (settings.py): a POST may take
5 s, a failed one is tried again 5 s x 2^(n-1) +-25 % after the n-th failure, 15 attempts in
all (four to six hours of retries, so a minute is well within them; no setting is shortened).

The receiver is tests/integration/test_webhooks.py's: it checks every signature with its own
Standard Webhooks code (not ours) and drops repeats by webhook-id. It takes an event, then goes
down the way a stopped service does: nothing listens on its port any more, so every attempt is
refused at the TCP level (the port is kept bound but not listening, so nobody else takes it).
For 60 s, while it is down, orders move through every event type webhooks carry: awaiting
approval, approved, filled (partly, then fully), rejected, risk failed, expired. Then it comes
back on the same port, and everything arrives:

- each event exactly once by webhook-id once the receiver drops repeats by id (a repeat may only
  be a retry of the same id, with the same body), every signature valid, nothing else;
- GET /api/v1/webhooks/{id}/deliveries lists for each event its refused attempts (no status, a
  ConnectError), all while the receiver was down, then one 200 after it was back, numbered 1..n;
- the attempts are spaced as the backoff says. After the n-th failure the next attempt comes no
  sooner than 0.75 x 5 s x 2^(n-1): it is due at the recording's now() + the delay, the
  recording is after the POST, and the attempt's time is read before it (0.1 s allowed for the
  two clocks' readings); the worker's polling only ever delays an attempt. And no later than
  1.25 x that + the sweep's period (a retry due is sent by the worker's sweep_webhooks job,
  every 2 s, or sooner by the run a new event's nudge starts) + 5 s of slack for a loaded
  machine.

Wall time: 5 s before the first event, 60 s down, then the last retries: ~37 s measured, at
most ~57 s, as none needs a 6th attempt (see QUIET_BEFORE_EVENTS). ~100 s measured in all,
at most ~2 minutes.
"""

from __future__ import annotations

import itertools
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.faults.cluster import free_port
from tests.faults.conftest import Stack
from tests.integration.test_webhooks import ALL_TYPES, Receiver, serving
from tradeops.settings import Settings
from tradeops.webhooks.service import MAX_BACKOFF_SECONDS

pytestmark = pytest.mark.faults

API = "/api/v1"
OUTAGE_SECONDS = 60.0
# The receiver has been down this long when the first event happens: the 5th attempt of any
# event (at least 0.75 x (5 + 10 + 20 + 40) = 56.25 s after its first) then comes after the
# outage, so none needs a 6th (60 to 100 s later again) and the test's wall time is bounded.
QUIET_BEFORE_EVENTS = 5.0
SWEEP_SECONDS = 2.0  # tradeops.jobs.tasks.EVERY_TWO_SECONDS: how often the worker sends retries
EARLY_TOLERANCE = 0.1
LATE_SLACK = 5.0
DELIVERY_SETTINGS = ("webhook_backoff_seconds", "webhook_max_attempts", "webhook_timeout_seconds")
ORDER = {
    "client_id": "CUST-1001",
    "symbol": "AAPL",
    "side": "BUY",
    "quantity": "50",
    "price": "192.55",
    # Good till cancelled: none of them expires at the desk's end of day, should the test run
    # then, with an event of its own.
    "time_in_force": "GTC",
}


class Api:
    """The stack's HTTP API as its people use it: the trader makes, the agent's key reviews,
    the approver decides, the admin registers the webhook and records fills."""

    def __init__(self, http: httpx.Client, stack: Stack) -> None:
        self.http = http
        self.as_ = {
            "trader": stack.headers(stack.trader),
            "agent": stack.headers(stack.agent_key),
            "approver": stack.headers(stack.approver),
            "admin": stack.headers(stack.admin),
        }

    def call(self, who: str, method: str, path: str, **kw: Any) -> Any:
        answer = self.http.request(method, f"{API}{path}", headers=self.as_[who], **kw)
        assert answer.status_code in (200, 201), f"{method} {path}: {answer.text}"
        return answer.json()

    def submit(self, **changes: Any) -> int:
        body = ORDER | {"client_order_id": f"webhook-outage-{uuid.uuid4().hex[:12]}"} | changes
        return int(self.call("trader", "POST", "/orders", json=body)["id"])

    def checked(self, order_id: int) -> str:
        """Wait for the worker's risk check (at most 30 s); the risk status."""
        deadline = time.monotonic() + 30
        while (status := self.order(order_id)["risk_status"]) == "PENDING":
            assert time.monotonic() < deadline, f"order {order_id} not checked in 30 s"
            time.sleep(0.05)
        return str(status)

    def order(self, order_id: int) -> dict[str, Any]:
        order: dict[str, Any] = self.call("trader", "GET", f"/orders/{order_id}")
        return order

    def awaiting_approval(self) -> int:
        """An order checked (PASSED), then reviewed: `order.awaiting_approval`."""
        order_id = self.submit()
        assert self.checked(order_id) == "PASSED"
        self.call("agent", "POST", f"/orders/{order_id}/review")
        return order_id

    def fill(self, order_id: int, quantity: str) -> None:
        execution = {
            "quantity": quantity,
            "price": "192.50",
            "venue": "XNAS",
            "executed_at": datetime.now(UTC).isoformat(),
            "external_id": f"XNAS-{uuid.uuid4().hex[:16]}",
        }
        self.call("admin", "POST", f"/orders/{order_id}/executions", json=execution)

    def deliveries(self, webhook_id: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        after = ""
        while True:
            page = self.call("admin", "GET", f"/webhooks/{webhook_id}/deliveries?limit=100{after}")
            items += page["items"]
            if page["next_cursor"] is None:
                return items
            after = f"&after={page['next_cursor']}"


@contextmanager
def refusing(port: int) -> Iterator[None]:
    """Nothing listens on the port: every connection is refused (RST), as by a host whose
    service is stopped. The port stays bound (not listening), so nothing else takes it."""
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", port))
    try:
        yield
    finally:
        held.close()


def wait_until(condition: Callable[[], bool], until: float, what: str) -> None:
    """Poll every 0.2 s until `condition` or the time.time() `until` (then fail: `what`)."""
    while not condition():
        assert time.time() < until, what
        time.sleep(0.2)


def key(order_id: int, event_type: str, body: dict[str, Any]) -> tuple[int, str, str]:
    """An event as (order, webhook event type, the order event it reports)."""
    return order_id, event_type, body["data"]["event"]["type"]


def at(attempt: dict[str, Any]) -> float:
    return datetime.fromisoformat(attempt["at"]).timestamp()


def test_a_receiver_down_for_a_minute_receives_every_event_afterwards_each_id_once(
    stack: Stack,
) -> None:
    # The worker inherits this process's environment: what Settings() reads here, it reads.
    settings = Settings()
    defaults = {name: Settings.model_fields[name].default for name in DELIVERY_SETTINGS}
    assert {name: getattr(settings, name) for name in DELIVERY_SETTINGS} == defaults, (
        "the worker must deliver with the default settings"
    )
    backoff = settings.webhook_backoff_seconds

    def expected_gap(after_attempt: int) -> float:
        return min(MAX_BACKOFF_SECONDS, backoff * 2 ** (after_attempt - 1))

    retry_window = sum(0.75 * expected_gap(n) for n in range(1, settings.webhook_max_attempts))
    assert retry_window > 60 * OUTAGE_SECONDS, "the default retries outlast the outage by far"

    port = free_port()
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        api = Api(http, stack)
        hook = {"url": f"http://127.0.0.1:{port}/hook", "event_types": ALL_TYPES}
        created = api.call("admin", "POST", "/webhooks", json=hook | {"desks": ["EQ-US"]})
        receiver = Receiver(secrets={"/hook": created["secret"]})
        # A price of the moment: the risk checks below pass, or fail, against it.
        price = {"symbol": "AAPL", "price": "192.55", "source": "fault suite"}
        snapshots = {"snapshots": [price | {"as_of": datetime.now(UTC).isoformat()}]}
        api.call("admin", "POST", "/market-data/snapshots", json=snapshots)

        # Up: an event arrives at once.
        with serving(receiver, port):
            before = api.awaiting_approval()
            wait_until(
                lambda: any(b["data"]["order_id"] == before for _, b in receiver.accepted.values()),
                time.time() + 30,
                "the receiver got nothing while it was up",
            )

        # Down for a minute, while orders move through every event webhooks carry.
        with refusing(port):
            down_at = time.time()
            time.sleep(QUIET_BEFORE_EVENTS)
            expiring = api.submit(
                time_in_force="GTD",
                expire_at=(datetime.now(UTC) + timedelta(seconds=2)).isoformat(),
            )
            approved = api.awaiting_approval()
            api.call("approver", "POST", f"/orders/{approved}/approve")
            api.fill(approved, "20")
            api.fill(approved, "30")
            rejected = api.awaiting_approval()
            api.call("approver", "POST", f"/orders/{rejected}/reject", json={"reason": "no"})
            risk_failed = api.submit(price="300")  # far above the market: the check fails
            assert api.checked(risk_failed) == "FAILED"
            # The worker's expiry sweep (every 30 s) expires the GTD order, still while down.
            wait_until(
                lambda: api.order(expiring)["status"] == "EXPIRED",
                down_at + OUTAGE_SECONDS - 5,
                "the GTD order did not expire while the receiver was down",
            )
            events_done_at = time.time()
            made_while_down = {expiring, approved, rejected, risk_failed}
            time.sleep(max(0.0, down_at + OUTAGE_SECONDS - time.time()))

        # Back on the same port: everything owed arrives.
        with serving(receiver, port):
            up_at = time.time()
            expected = Counter(
                {
                    (before, "order.awaiting_approval", "REVIEWED"): 1,
                    (approved, "order.awaiting_approval", "REVIEWED"): 1,
                    (approved, "order.approved", "APPROVED"): 1,
                    (approved, "order.filled", "PARTIALLY_FILLED"): 1,
                    (approved, "order.filled", "FILLED"): 1,
                    (rejected, "order.awaiting_approval", "REVIEWED"): 1,
                    (rejected, "order.rejected", "REJECTED"): 1,
                    (risk_failed, "order.risk_failed", "RISK_CHECKED"): 1,
                    (expiring, "order.expired", "EXPIRED"): 1,
                }
            )
            ours = set(expected)
            outstanding: list[dict[str, Any]] = []

            def settled() -> bool:
                deliveries = api.deliveries(created["id"])
                outstanding[:] = [d for d in deliveries if d["status"] == "pending"]
                arrived = {
                    key(b["data"]["order_id"], b["type"], b) for _, b in receiver.accepted.values()
                }
                return not outstanding and ours <= arrived

            # The last attempt before the receiver came back is at most the 4th: the 5th
            # comes at most 1.25 x 40 s after it, plus the sweep's period.
            wait_until(
                settled,
                up_at + 1.25 * expected_gap(4) + SWEEP_SECONDS + LATE_SLACK + 5,
                f"still pending after the receiver came back: {outstanding}",
            )
            settled_at = time.time()
        deliveries = api.deliveries(created["id"])

    # Every delivery the outbox wrote for the endpoint arrived, signed, once by webhook-id.
    assert receiver.bad_signatures == 0
    assert {d["webhook_id"] for d in deliveries} == set(receiver.accepted)
    assert all(len(bodies) == 1 for bodies in receiver.bodies.values()), "an id, two bodies"
    for delivery in deliveries:
        _, body = receiver.accepted[delivery["webhook_id"]]
        assert body == delivery["payload"]
        assert delivery["status"] == "delivered"
    # What the receiver kept (one body per webhook-id): each of our events exactly once.
    received = Counter(
        key(body["data"]["order_id"], body["type"], body) for _, body in receiver.accepted.values()
    )
    mine = {before, *made_while_down}
    assert Counter({k: n for k, n in received.items() if k[0] in mine}) == expected

    # Each attempt recorded: refused while down, then one 200 once back, spaced by the backoff.
    gaps: list[tuple[int, float]] = []
    for delivery in deliveries:
        log = delivery["attempt_log"]
        assert [a["attempt"] for a in log] == list(range(1, len(log) + 1))
        assert delivery["attempts"] == len(log)
        *failed, last = log
        assert last["status_code"] == 200 and last["error"] is None
        if delivery["order_id"] == before:
            assert failed == [] and at(last) < down_at
        elif delivery["order_id"] in made_while_down:
            assert failed, f"{delivery['event_type']} of {delivery['order_id']} never refused"
        for attempt in failed:
            assert attempt["status_code"] is None
            assert attempt["error"].startswith("ConnectError"), attempt
            assert down_at <= at(attempt) < up_at
        if failed:
            assert at(last) > up_at - 1.0  # its time is read just before the POST
        for n, (earlier, later) in enumerate(itertools.pairwise(log), start=1):
            gap = at(later) - at(earlier)
            assert gap >= 0.75 * expected_gap(n) - EARLY_TOLERANCE, (delivery["webhook_id"], n, gap)
            assert gap <= 1.25 * expected_gap(n) + SWEEP_SECONDS + LATE_SLACK, (
                delivery["webhook_id"],
                n,
                gap,
            )
            gaps.append((n, gap))

    by_attempt = {n: sorted(g for m, g in gaps if m == n) for n in sorted({n for n, _ in gaps})}
    print(
        f"\nwebhook outage: {len(deliveries)} deliveries, receiver down {up_at - down_at:.1f} s,"
        f" events done {events_done_at - down_at:.1f} s into it, all delivered"
        f" {settled_at - up_at:.1f} s after it came back;"
        f" repeats dropped by id: {len(receiver.duplicates)};"
        f" attempts: {Counter(d['attempts'] for d in deliveries)};"
        " gaps after attempt n (s): "
        + ", ".join(f"{n}: {g[0]:.1f}-{g[-1]:.1f}" for n, g in by_attempt.items())
    )
