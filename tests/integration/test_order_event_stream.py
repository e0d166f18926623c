"""GET /api/v1/orders/events/stream: order events as Server-Sent Events, over a real socket.

httpx's ASGI transport buffers a whole response, so these tests read the stream from a
uvicorn server in a thread (tests.live.serving), with a short heartbeat and a cap of two
streams per principal. Events are written through the API (in-process app, same database)
and, for the cases the API cannot produce on demand (a transaction left open, one rolled
back), by the migration owner directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import create_database, drop_database
from tests.factories import SEED_ORDER, Cast, bearer, make_api_key
from tests.live import LiveServer, serving
from tests.pages import sign_in
from tradeops.app import create_app
from tradeops.settings import Settings
from tradeops.ui import router as ui_router

pytestmark = pytest.mark.slow

STREAM = "/api/v1/orders/events/stream"
UI_EVENTS = "/ui/orders/events"
FI_ORDER = {**SEED_ORDER, "client_id": "CUST-2001"}


@pytest.fixture(scope="module")
def stream_url(settings: Settings, database_url: str) -> Iterator[str]:
    quick = settings.model_copy(
        update={"stream_heartbeat_seconds": 0.5, "streams_per_principal": 2}
    )
    with serving(create_app(quick, database_url)) as url:
        yield url


class Stream:
    """Reads the stream in a task of its own into a queue, so a test may wait for the next
    event with a timeout and carry on reading afterwards."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.comments: list[str] = []
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            async for line in self.response.aiter_lines():
                if line.startswith(":"):
                    self.comments.append(line)
                elif line == "" and fields:
                    assert fields["event"] == "order_event"
                    data: dict[str, Any] = json.loads(fields["data"])
                    assert int(fields["id"]) == data["id"]
                    self._events.put_nowait(data)
                    fields = {}
                elif line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
        finally:
            self._events.put_nowait(None)

    async def next_event(self, timeout: float = 10.0) -> dict[str, Any]:
        event = await asyncio.wait_for(self._events.get(), timeout)
        if event is None:
            raise AssertionError("the stream ended")
        return event

    async def events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        return [await self.next_event(timeout) for _ in range(count)]

    async def nothing_within(self, seconds: float) -> None:
        try:
            event = await self.next_event(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected event {event}")

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await self._reader


@asynccontextmanager
async def stream(
    url: str,
    headers: dict[str, str],
    last_event_id: int | None = None,
    *,
    http: httpx.AsyncClient | None = None,
    path: str = STREAM,
) -> AsyncIterator[Stream]:
    sent = dict(headers)
    if last_event_id is not None:
        sent["Last-Event-ID"] = str(last_event_id)
    async with contextlib.AsyncExitStack() as stack:
        if http is None:
            http = await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(5, read=30))
            )
        response = await stack.enter_async_context(http.stream("GET", path, headers=sent))
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        events = Stream(response)
        try:
            yield events
        finally:
            await events.close()


async def submit(client: httpx.AsyncClient, cast: Cast, who: str = "trader", **order: Any) -> int:
    created = await client.post("/api/v1/orders", json={**SEED_ORDER, **order}, headers=cast[who])
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


async def all_event_ids(engine: AsyncEngine, desk: str | None = None) -> list[int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT e.id FROM order_events e JOIN desks d ON d.id = e.desk_id"
                " WHERE CAST(:desk AS text) IS NULL OR d.code = :desk ORDER BY e.id"
            ),
            {"desk": desk},
        )
        return [row[0] for row in rows]


async def test_events_arrive_as_they_commit_with_ids_and_versions(
    stream_url: str, client: httpx.AsyncClient, cast: Cast
) -> None:
    async with stream(stream_url, cast["approver"]) as events:
        order_id = await submit(client, cast)
        reviewed = await client.post(f"/api/v1/orders/{order_id}/review", headers=cast["trader2"])
        assert reviewed.status_code == 200
        created, review = await events.events(2)
    assert (created["order_id"], created["type"], created["version"]) == (order_id, "CREATED", 1)
    assert (review["order_id"], review["type"], review["version"]) == (order_id, "REVIEWED", 2)
    assert created["desk"] == "EQ-US" and review["actor"].startswith("user:")
    assert review["id"] > created["id"]
    history = await client.get(f"/api/v1/orders/{order_id}/events", headers=cast["approver"])
    assert [e["type"] for e in history.json()["items"]] == ["CREATED", "REVIEWED"]


async def test_stream_resume_after_a_disconnect_loses_nothing(
    stream_url: str, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """Read some events, drop the connection, let more happen (in parallel, so ids and
    commits interleave), reconnect with Last-Event-ID: every event exactly once."""
    seen: list[int] = []
    async with stream(stream_url, cast["trader"]) as events:
        for _ in range(3):
            await submit(client, cast)
        seen += [e["id"] for e in await events.events(3)]
    # Disconnected: 20 orders submitted 5 at a time, each then reviewed.
    for _ in range(4):
        orders = await asyncio.gather(*(submit(client, cast) for _ in range(5)))
        await asyncio.gather(
            *(client.post(f"/api/v1/orders/{o}/review", headers=cast["trader2"]) for o in orders)
        )
    expected = await all_event_ids(owner_engine)
    assert len(expected) == 3 + 40
    async with stream(stream_url, cast["trader"], last_event_id=seen[-1]) as events:
        seen += [e["id"] for e in await events.events(40)]
        await events.nothing_within(0.7)
    assert sorted(seen) == expected
    assert len(set(seen)) == len(seen)


async def test_an_event_that_commits_late_is_not_skipped(
    stream_url: str, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """Transaction A takes an event id and commits after B took a later id and committed:
    the stream holds B's event back until A ends, so a client that resumes after B's event
    still gets A's."""
    first = await submit(client, cast)
    async with stream(stream_url, cast["trader"]) as events:
        async with owner_engine.connect() as conn:
            late = await conn.begin()
            late_id = await conn.scalar(
                text(
                    "INSERT INTO order_events (order_id, desk_id, seq, type, actor)"
                    " SELECT id, desk_id, 99, 'NOTE', 'user:test' FROM orders WHERE id = :id"
                    " RETURNING id"
                ),
                {"id": first},
            )
            second = await submit(client, cast)  # commits now, its event id > late_id
            await events.nothing_within(0.7)  # held back behind the open transaction
            await late.commit()
        got = await events.events(2)
    assert [e["id"] for e in got] == [late_id, got[1]["id"]]
    assert got[1]["order_id"] == second and got[1]["id"] > late_id
    async with stream(stream_url, cast["trader"], last_event_id=late_id) as events:
        assert (await events.next_event())["order_id"] == second


async def test_a_long_transaction_in_another_database_holds_nothing_back(
    stream_url: str, client: httpx.AsyncClient, cast: Cast, postgres_server_url: str
) -> None:
    """The server-wide oldest transaction may belong to another database on the same
    server (another application, a test run beside this one): it cannot write our events,
    so the stream does not wait for it (order_events_horizon, migration 0015)."""
    elsewhere = create_database(postgres_server_url, prefix="tradeops_elsewhere")
    try:
        async with await psycopg.AsyncConnection.connect(elsewhere) as conn:
            await conn.execute("SELECT pg_current_xact_id()")  # a transaction id, held open
            async with stream(stream_url, cast["trader"]) as events:
                order_id = await submit(client, cast)
                assert (await events.next_event(timeout=2))["order_id"] == order_id
            await conn.rollback()
    finally:
        drop_database(postgres_server_url, elsewhere)


async def test_nothing_is_announced_that_did_not_commit(
    stream_url: str, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await submit(client, cast)
    async with stream(stream_url, cast["trader"]) as events:
        async with owner_engine.connect() as conn:
            doomed = await conn.begin()
            await conn.execute(
                text(
                    "INSERT INTO order_events (order_id, desk_id, seq, type, actor)"
                    " SELECT id, desk_id, 99, 'NOTE', 'user:test' FROM orders WHERE id = :id"
                ),
                {"id": order_id},
            )
            await doomed.rollback()
        await events.nothing_within(1.0)
        assert any(c.startswith(": keep-alive") for c in events.comments)


async def test_a_desk_sees_only_its_own_events(
    stream_url: str, client: httpx.AsyncClient, cast: Cast
) -> None:
    async with (
        stream(stream_url, cast["trader"]) as eq,
        stream(stream_url, cast["trader_fi"]) as fi,
        stream(stream_url, cast["risk"]) as every_desk,
    ):
        fi_order = await submit(client, cast, "trader_fi", **FI_ORDER)
        eq_order = await submit(client, cast)
        assert (await eq.next_event())["order_id"] == eq_order  # never the FI-EU order
        assert (await fi.next_event())["order_id"] == fi_order
        await fi.nothing_within(0.7)  # never the EQ-US order
        both = {e["order_id"] for e in await every_desk.events(2)}
        assert both == {eq_order, fi_order}


async def test_who_may_open_a_stream(
    stream_url: str, cast: Cast, owner_engine: AsyncEngine
) -> None:
    _, no_orders_key = await make_api_key(owner_engine, "agent@test.bank", ["reference:read"])
    async with httpx.AsyncClient(base_url=stream_url, timeout=10) as http:
        anonymous = await http.get(STREAM)
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == "application/problem+json"
        forged = await http.get(STREAM, headers=bearer("not-a-token"))
        assert forged.status_code == 401
        narrowed = await http.get(STREAM, headers=bearer(no_orders_key))
        assert narrowed.status_code == 403
        invalid = await http.get(STREAM, headers={**cast["trader"], "Last-Event-ID": "x"})
        assert invalid.status_code == 422
    # The matrix's principals (test_authorization_matrix.py): everyone who may read orders.
    for who in ("trader", "trader_fi", "approver", "agent", "risk", "admin"):
        async with stream(stream_url, cast[who]):
            pass


async def test_resuming_after_another_desks_event_is_refused(
    stream_url: str, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await submit(client, cast, "trader_fi", **FI_ORDER)
    (fi_event,) = await all_event_ids(owner_engine, "FI-EU")
    async with httpx.AsyncClient(base_url=stream_url, timeout=10) as http:
        probe = await http.get(STREAM, headers={**cast["trader"], "Last-Event-ID": str(fi_event)})
    assert probe.status_code == 422
    assert probe.json()["errors"][0]["field"] == "header.Last-Event-ID"


async def test_streams_per_principal_are_capped(stream_url: str, cast: Cast) -> None:
    async with stream(stream_url, cast["agent"]), stream(stream_url, cast["agent"]):
        async with httpx.AsyncClient(base_url=stream_url, timeout=10) as http:
            third = await http.get(STREAM, headers=cast["agent"])
        assert third.status_code == 429
        assert third.json()["type"].endswith("/too-many-streams")
        assert third.headers["Retry-After"] == "5"
        async with stream(stream_url, cast["trader"]):  # another principal is not counted
            pass
    # Closed streams give their slots back (the server notices the disconnect).
    deadline = time.monotonic() + 5
    while True:
        try:
            async with stream(stream_url, cast["agent"]), stream(stream_url, cast["agent"]):
                break
        except AssertionError:
            assert time.monotonic() < deadline, "slots were not given back"
            await asyncio.sleep(0.2)


async def test_the_listener_connects_again_after_losing_its_connection(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """The process's LISTEN connection is ended (as a failover or a restart would): it
    connects again and the stream goes on, well before its 15 s heartbeat would look."""
    ended = text(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'tradeops-listen'"
        " AND query LIKE 'LISTEN%'"
    )
    async with stream(live_server.url, cast["trader"]) as events:
        deadline = time.monotonic() + 5
        while True:  # the listener starts with the process's first stream
            async with owner_engine.connect() as conn:
                if (await conn.execute(ended)).all():
                    break
            assert time.monotonic() < deadline, "no listener to end"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # it waits 1 s before connecting again
        first = await submit(client, cast)
        # Within 10 s (a loaded machine), not the heartbeat's 15: the reconnection brought it.
        assert (await events.next_event(timeout=10))["order_id"] == first


async def test_the_queue_page_follows_events_by_its_session_cookie(
    stream_url: str, client: httpx.AsyncClient, cast: Cast
) -> None:
    """/ui/orders/events: the pages' cookie is sent to /ui only; same events, same desks."""
    async with httpx.AsyncClient(base_url=stream_url, timeout=httpx.Timeout(5, read=30)) as ui:
        signed_out = await ui.get(UI_EVENTS)
        assert signed_out.status_code == 303
        assert signed_out.headers["location"].startswith("/ui/sign-in")
        assert (await sign_in(ui, "approver@test.bank")).status_code == 303
        async with stream(stream_url, {}, http=ui, path=UI_EVENTS) as events:
            await submit(client, cast, "trader_fi", **FI_ORDER)
            eq_order = await submit(client, cast)
            assert (await events.next_event())["order_id"] == eq_order


async def test_the_queue_pages_stream_ends_when_its_session_expires(
    stream_url: str, client: httpx.AsyncClient, cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session is read once when the stream opens; each read checks its expiry again."""
    async with httpx.AsyncClient(base_url=stream_url, timeout=httpx.Timeout(5, read=30)) as ui:
        assert (await sign_in(ui, "approver@test.bank")).status_code == 303
        async with stream(stream_url, {}, http=ui, path=UI_EVENTS) as events:
            first = await submit(client, cast)
            assert (await events.next_event())["order_id"] == first
            later = time.time() + 10 * 24 * 3600  # past any session's expiry
            monkeypatch.setattr(ui_router, "time", SimpleNamespace(time=lambda: later))
            await submit(client, cast)
            with pytest.raises(AssertionError, match="the stream ended"):
                await events.next_event()


async def test_time_from_commit_to_event(
    live_server: LiveServer, client: httpx.AsyncClient, cast: Cast
) -> None:
    """p50 of the time from a commit (the API's 201) to its event arriving, over 50 orders,
    on a server with the default 15 s heartbeat: the notification brings each event."""
    after_answer: list[float] = []  # the commit is before the 201: a lower bound
    after_request: list[float] = []  # the commit is after the POST was sent: an upper bound
    async with stream(live_server.url, cast["trader"]) as events:
        for _ in range(50):
            sent = time.perf_counter()
            await submit(client, cast)
            answered = time.perf_counter()
            await events.next_event()
            arrived = time.perf_counter()
            after_answer.append(arrived - answered)
            after_request.append(arrived - sent)
    low, high = statistics.median(after_answer), statistics.median(after_request)
    print(f"\ncommit → SSE event, p50 over 50: between {low * 1000:.1f} and {high * 1000:.1f} ms")
    assert low < 0.5


async def test_the_stream_and_the_webhook_outbox_both_hear_every_event(
    stream_url: str, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """order_events has two AFTER INSERT triggers, the stream's NOTIFY (migration 0015) and
    the webhook outbox (0012): both fire for one event, in its transaction."""
    endpoint = {"url": "https://hooks.example.com/both", "event_types": ["order.expired"]}
    registered = await client.post(
        "/api/v1/webhooks", json=endpoint | {"desks": ["EQ-US"]}, headers=cast["admin"]
    )
    assert registered.status_code == 201, registered.text
    order_id = await submit(client, cast)
    async with stream(stream_url, cast["trader"]) as events:
        async with owner_engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO order_events (order_id, desk_id, seq, type, actor)"
                    " SELECT id, desk_id, 99, 'EXPIRED', 'user:test' FROM orders WHERE id = :id"
                ),
                {"id": order_id},
            )
        expired = await events.next_event()
    assert (expired["order_id"], expired["type"]) == (order_id, "EXPIRED")
    async with owner_engine.connect() as conn:
        outbox = await conn.scalar(
            text("SELECT count(*) FROM webhook_deliveries WHERE order_id = :id"), {"id": order_id}
        )
        names = set(
            await conn.scalars(
                text(
                    "SELECT tgname FROM pg_trigger WHERE tgrelid = 'order_events'::regclass"
                    " AND NOT tgisinternal"
                )
            )
        )
    assert outbox == 1
    assert {"order_events_notify", "order_events_webhooks"} <= names
