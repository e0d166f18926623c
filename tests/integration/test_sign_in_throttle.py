"""Sign-in under pressure: concurrent guesses, unknown emails, and a burst of password checks.

Issue 12 item 3: failures are counted atomically, so from the lock on every attempt is
refused however many arrive at once, and an unknown email is throttled exactly like a known
one (the lockout must not reveal who has an account). Item 4: password hashes are checked
off the event loop, outside any transaction, with a cap on how many may wait.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import PASSWORD, Cast
from tests.live import LiveServer
from tests.pages import csrf_of
from tradeops.app import create_app
from tradeops.auth.sign_in import email_key
from tradeops.maintenance import run_round
from tradeops.settings import Settings

API = "/api/v1"
TOKEN = f"{API}/auth/token"
PROBLEM = "application/problem+json"
ATTEMPTS_AT_ONCE = 12


async def sign_in(http: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await http.post(TOKEN, data={"username": email, "password": password})


async def fail_times(http: httpx.AsyncClient, email: str, times: int) -> None:
    for _ in range(times):
        assert (await sign_in(http, email, "wrong-password")).status_code == 401


async def burst(http: httpx.AsyncClient, email: str, right_password: bool = False) -> list[int]:
    """ATTEMPTS_AT_ONCE sign-ins at once, all wrong but one when `right_password`."""
    passwords = ["wrong-password"] * (ATTEMPTS_AT_ONCE - 1)
    passwords.append(PASSWORD if right_password else "wrong-password")
    answers = await asyncio.gather(*(sign_in(http, email, p) for p in passwords))
    return [answer.status_code for answer in answers]


def evaluated_once_the_count_allowed(statuses: list[int], success: int, max_failures: int) -> None:
    """Attempts that arrive together are counted one by one under the throttle row's lock.

    One failure short of the lock, the first attempt evaluated decides: a failure locks the
    email (one 401, every other attempt 429); the right password, if the server happens to
    check it first, gets in as it would have alone, the count starts again, and exactly
    `max_failures` of the wrong ones are counted before the lock refuses the rest.
    """
    if success in statuses:
        assert statuses.count(success) == 1, statuses
        assert statuses.count(401) == max_failures, statuses
    else:
        assert statuses.count(401) == 1, f"only the failure that locks is a 401: {statuses}"
    assert set(statuses) <= {success, 401, 429}, statuses


@pytest.mark.slow
@pytest.mark.parametrize("email", ["trader@test.bank", "trader2@test.bank", "approver@test.bank"])
async def test_concurrent_sign_ins_cannot_slip_past_the_lock(
    client: httpx.AsyncClient, cast: Cast, settings: Settings, email: str
) -> None:
    """One failure short of the lock, twelve wrong at once: one is counted, eleven refused."""
    await fail_times(client, email, settings.login_max_failures - 1)
    statuses = await burst(client, email)
    assert statuses.count(401) == 1, f"only the failure that locks is a 401: {statuses}"
    assert statuses.count(429) == ATTEMPTS_AT_ONCE - 1, statuses
    after = await sign_in(client, email, PASSWORD)
    assert after.status_code == 429, "the lock holds after the burst"


@pytest.mark.slow
async def test_a_burst_with_the_right_password_is_counted_one_by_one(
    client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    """The right password among eleven wrong ones: it gets in only if checked before the lock.

    Which of twelve concurrent requests the server checks first is not ours to choose (the
    CI run of stop 20 saw the right one first), so both outcomes are asserted exactly.
    """
    email = "trader2@test.bank"
    await fail_times(client, email, settings.login_max_failures - 1)
    statuses = await burst(client, email, right_password=True)
    evaluated_once_the_count_allowed(statuses, 200, settings.login_max_failures)
    assert (await sign_in(client, email, PASSWORD)).status_code == 429, "locked after the burst"


@pytest.mark.slow
async def test_concurrent_page_sign_ins_cannot_slip_past_the_lock(
    client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    email = "approver@test.bank"
    form = await client.get("/ui/sign-in")
    csrf = csrf_of(form.text)
    await fail_times(client, email, settings.login_max_failures - 1)
    passwords = ["wrong-password"] * (ATTEMPTS_AT_ONCE - 1) + [PASSWORD]
    answers = await asyncio.gather(
        *(
            client.post("/ui/sign-in", data={"email": email, "password": p, "csrf_token": csrf})
            for p in passwords
        )
    )
    statuses = [answer.status_code for answer in answers]
    evaluated_once_the_count_allowed(statuses, 303, settings.login_max_failures)
    assert (await sign_in(client, email, PASSWORD)).status_code == 429


async def test_an_unknown_email_is_throttled_exactly_like_a_known_one(
    client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    answers: dict[str, list[httpx.Response]] = {}
    for email in ("trader@test.bank", "nobody@test.bank"):
        answers[email] = [
            await sign_in(client, email, "wrong-password")
            for _ in range(settings.login_max_failures + 1)
        ]
    known, unknown = answers["trader@test.bank"], answers["nobody@test.bank"]
    assert [r.status_code for r in known] == [401] * settings.login_max_failures + [429]
    assert [r.status_code for r in unknown] == [r.status_code for r in known]
    for mine, theirs in zip(known, unknown, strict=True):
        assert mine.json()["detail"] == theirs.json()["detail"]
        assert mine.json()["type"] == theirs.json()["type"]
        assert ("retry-after" in mine.headers) == ("retry-after" in theirs.headers)
    # The lock is per email, written as people type it.
    assert (await sign_in(client, "NoBody@Test.Bank", PASSWORD)).status_code == 429


async def test_a_failure_is_counted_and_a_success_forgets_the_failures(
    client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    await fail_times(client, "trader@test.bank", settings.login_max_failures - 1)
    assert (await sign_in(client, "trader@test.bank", PASSWORD)).status_code == 200
    await fail_times(client, "trader@test.bank", settings.login_max_failures - 1)
    assert (await sign_in(client, "trader@test.bank", PASSWORD)).status_code == 200


@pytest.fixture
async def capped_client(settings: Settings, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An app that checks one password at a time and lets one more wait."""
    capped = settings.model_copy(
        update={"password_verify_threads": 1, "password_verify_max_waiting": 1}
    )
    app: FastAPI = create_app(capped, database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


@pytest.mark.slow
async def test_password_checks_beyond_the_cap_get_503_with_retry_after(
    capped_client: httpx.AsyncClient, cast: Cast
) -> None:
    emails = [f"someone{n}@test.bank" for n in range(8)]
    answers = await asyncio.gather(*(sign_in(capped_client, e, "guess") for e in emails))
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(401) >= 2, statuses
    busy = [answer for answer in answers if answer.status_code == 503]
    assert busy, f"more than the cap at once: some are turned away ({statuses})"
    assert set(statuses) <= {401, 503}
    for answer in busy:
        assert answer.headers["content-type"] == PROBLEM
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.json()["status"] == 503


@pytest.mark.slow
async def test_page_sign_ins_beyond_the_cap_get_a_503_page_with_retry_after(
    capped_client: httpx.AsyncClient, cast: Cast
) -> None:
    csrf = csrf_of((await capped_client.get("/ui/sign-in")).text)
    answers = await asyncio.gather(
        *(
            capped_client.post(
                "/ui/sign-in",
                data={"email": f"someone{n}@test.bank", "password": "guess", "csrf_token": csrf},
            )
            for n in range(8)
        )
    )
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {401, 503} and 503 in statuses, statuses
    busy = next(answer for answer in answers if answer.status_code == 503)
    assert "Too many sign-ins are being checked" in busy.text
    assert int(busy.headers["retry-after"]) >= 1


@pytest.mark.slow
async def test_health_stays_fast_during_a_burst_of_sign_ins(
    live_server: LiveServer, cast: Cast
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as http:
        assert (await http.get("/health/live")).status_code == 200  # a warm connection
        quiet = await _health_latencies(http, 10)
        signing_in = asyncio.gather(
            *(sign_in(http, f"burst{n}@test.bank", "guess") for n in range(20))
        )
        await asyncio.sleep(0.05)  # the burst is under way
        during = await _health_latencies(http, 40)
        statuses = [answer.status_code for answer in await signing_in]
    p50 = statistics.median(during)
    assert p50 < 0.05, f"/health/live p50 {p50 * 1000:.0f} ms (quiet: {min(quiet) * 1000:.1f})"
    assert set(statuses) <= {401, 503}, statuses


async def _health_latencies(http: httpx.AsyncClient, count: int) -> list[float]:
    """Probes on a fixed schedule (every 50 ms, each its own request), as a load balancer
    polls: while the server's loop is blocked, every probe due in that time waits."""

    async def probe(delay: float) -> float:
        await asyncio.sleep(delay)
        started = time.perf_counter()
        assert (await http.get("/health/live")).status_code == 200
        return time.perf_counter() - started

    return list(await asyncio.gather(*(probe(0.05 * n) for n in range(count))))


async def test_failures_older_than_the_window_are_forgotten_and_housekeeping_drops_them(
    app: FastAPI,
    client: httpx.AsyncClient,
    cast: Cast,
    settings: Settings,
    owner_engine: AsyncEngine,
) -> None:
    """The table holds only recently tried emails, even ones that never succeed."""
    await fail_times(client, "old@test.bank", settings.login_max_failures - 1)
    await fail_times(client, "recent@test.bank", 1)
    await fail_times(client, "trader@test.bank", settings.login_max_failures)  # locked
    async with owner_engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE sign_in_throttle SET last_failed_at = now() - make_interval(secs => :age)"
                " WHERE email_key = :key"
            ),
            {"age": settings.login_failure_window_seconds + 60, "key": email_key("old@test.bank")},
        )
    # One failure past the window starts a new count: the old ones no longer bring the lock.
    await fail_times(client, "old@test.bank", settings.login_max_failures - 1)
    async with owner_engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE sign_in_throttle SET last_failed_at = now() - make_interval(secs => :age)"
                " WHERE email_key = :key"
            ),
            {"age": settings.login_failure_window_seconds + 60, "key": email_key("old@test.bank")},
        )
    await run_round(app.state.db, settings)
    async with owner_engine.connect() as conn:
        kept = set((await conn.execute(text("SELECT email_key FROM sign_in_throttle"))).scalars())
    assert kept == {email_key("recent@test.bank"), email_key("trader@test.bank")}


async def test_the_application_role_cannot_read_the_throttle(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await fail_times(client, "trader@test.bank", 1)
    async with owner_engine.begin() as conn:
        await conn.execute(
            text(
                "SELECT set_config('role', 'tradeops_app', true),"
                " set_config('tradeops.user_id', :id, true),"
                " set_config('tradeops.role', 'admin', true)"
            ),
            {"id": str(cast.ids["admin"])},
        )
        seen = await conn.scalar(text("SELECT count(*) FROM sign_in_throttle"))
    assert seen == 0, "only the sign-in step (and the system's housekeeping) sees failures"
