"""The /ui pages over HTTP: sign-in, session cookie, CSRF, who sees and decides what.

Each person gets their own cookie jar (a client of their own); orders are arranged through
the API as agents and traders submit them. Browser tests are in tests/e2e.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from html import unescape

import httpx
import pytest
from fastapi import FastAPI, Response
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import (
    SEED_ORDER,
    Cast,
    approved_order,
    bearer,
    make_instrument,
    make_maker,
    make_user,
    pass_risk_check,
)
from tests.pages import AGENT_ADVICE, API, csrf_of, review, sign_in, submit
from tradeops.auth.sign_in import email_key
from tradeops.settings import Settings
from tradeops.ui.session import COOKIE, Sessions

FI_ORDER = {**SEED_ORDER, "client_id": "CUST-2001"}
OpenPerson = Callable[[str], Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def person(app: FastAPI, cast: Cast) -> AsyncIterator[OpenPerson]:
    """Sign someone in with a cookie jar of their own: `approver = await person("approver@…")`."""
    async with AsyncExitStack() as stack:

        async def open_as(email: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            http = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://testserver")
            )
            signed = await sign_in(http, email)
            assert signed.status_code == 303, signed.text
            return http

        yield open_as


async def agent_order(
    client: httpx.AsyncClient, cast: Cast, engine: AsyncEngine, **order: object
) -> int:
    """An order an agent submitted and reviewed with its advice; its risk check passed."""
    order_id = await submit(client, cast["agent"], **order)
    await review(client, order_id, cast["agent"], **AGENT_ADVICE)
    await pass_risk_check(engine, order_id)
    return order_id


async def status_of(client: httpx.AsyncClient, cast: Cast, order_id: int) -> str:
    response = await client.get(f"{API}/orders/{order_id}", headers=cast["risk"])
    return str(response.json()["status"])


async def post_form(
    http: httpx.AsyncClient, page: str, action: str, **fields: str
) -> httpx.Response:
    """Post a page's form the way the browser would: with the page's CSRF token and version."""
    html = (await http.get(page)).text
    data = {"csrf_token": csrf_of(html), **fields}
    return await http.post(action, data=data)


# --- sign-in and the session cookie -------------------------------------------------------


async def test_sign_in_sets_an_httponly_lax_session_cookie_for_the_pages_only(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    signed = await sign_in(client, "approver@test.bank")
    assert signed.status_code == 303
    assert signed.headers["location"] == "/ui/orders"
    cookie = next(c for c in signed.headers.get_list("set-cookie") if c.startswith(COOKIE))
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "samesite", "max-age"} <= flags
    assert "samesite=lax" in cookie.lower()
    assert "path=/ui" in cookie.lower()
    assert "secure" not in flags, "plain http is allowed in the test environment only"
    queue = await client.get("/ui/orders")
    assert queue.status_code == 200
    assert "approver@test.bank" in queue.text


def test_session_cookie_is_secure_outside_dev_and_test() -> None:
    prod = Settings(
        env="prod",
        secret_key=SecretStr("p" * 40),
        audit_key=SecretStr("a" * 40),
        _env_file=None,  # type: ignore[call-arg]
    )
    sessions = Sessions(prod)
    response = Response()
    sessions.save(response, sessions.start(7, "approver", 0))
    cookie = response.headers["set-cookie"].lower()
    assert "; secure" in cookie and "; httponly" in cookie and "samesite=lax" in cookie


async def test_wrong_password_and_unknown_email_get_the_same_answer_and_are_counted(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    wrong = await sign_in(client, "approver@test.bank", "not-the-password")
    unknown = await sign_in(client, "nobody@test.bank", "not-the-password")
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert "Wrong email or password." in response.text
        assert COOKIE not in "".join(
            c for c in response.headers.get_list("set-cookie") if "sub" in c
        )
    assert (await client.get("/ui/orders")).status_code == 303, "still signed out"
    async with owner_engine.connect() as conn:
        failures = await conn.scalar(
            text("SELECT failures FROM sign_in_throttle WHERE email_key = :key"),
            {"key": email_key("approver@test.bank")},
        )
        audited = await conn.scalar(
            text("SELECT count(*) FROM audit_events WHERE action = 'login.failed'")
        )
    assert failures == 1
    assert audited == 2


async def test_repeated_failures_lock_the_account_with_429(
    client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    for _ in range(settings.login_max_failures):
        assert (await sign_in(client, "trader@test.bank", "wrong")).status_code == 401
    locked = await sign_in(client, "trader@test.bank")
    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.text
    assert int(locked.headers["retry-after"]) > 0


async def test_sign_in_without_or_with_a_wrong_csrf_token_is_refused(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    credentials = {"email": "approver@test.bank", "password": "correct-horse-battery-staple"}
    await client.get("/ui/sign-in")
    missing = await client.post("/ui/sign-in", data=credentials)
    wrong = await client.post("/ui/sign-in", data={**credentials, "csrf_token": "guess"})
    for response in (missing, wrong):
        assert response.status_code == 403
        assert 'data-problem="csrf"' in response.text
    client.cookies.clear()
    no_cookie = await client.post("/ui/sign-in", data={**credentials, "csrf_token": "x"})
    assert no_cookie.status_code == 403


async def test_signing_in_starts_a_new_csrf_token(client: httpx.AsyncClient, cast: Cast) -> None:
    before = csrf_of((await client.get("/ui/sign-in")).text)
    await sign_in(client, "approver@test.bank")
    after = csrf_of((await client.get("/ui/orders")).text)
    assert before != after


async def test_pages_need_a_session_and_send_people_to_sign_in(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    page = await client.get("/ui/orders/5")
    assert page.status_code == 303
    assert page.headers["location"] == "/ui/sign-in?next=/ui/orders/5"
    polled = await client.get("/ui/orders/rows", headers={"HX-Request": "true"})
    assert polled.status_code == 401
    assert polled.headers["hx-redirect"].startswith("/ui/sign-in")
    post = await client.post("/ui/orders/5/approve", data={"csrf_token": "x"})
    assert post.status_code == 303


async def test_after_sign_in_only_our_own_pages_are_a_place_to_return_to(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    for target, expected in (
        ("/ui/orders/12", "/ui/orders/12"),
        ("https://evil.example/ui", "/ui/orders"),
        ("//evil.example", "/ui/orders"),
    ):
        form = await client.get("/ui/sign-in", params={"next": target})
        signed = await client.post(
            "/ui/sign-in",
            data={
                "email": "approver@test.bank",
                "password": "correct-horse-battery-staple",
                "csrf_token": csrf_of(form.text),
                "next": target,
            },
        )
        assert signed.headers["location"] == expected


async def test_a_forged_cookie_or_an_api_token_is_no_session(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    api_token = cast["approver"]["Authorization"].removeprefix("Bearer ")
    for value in ("garbage", api_token):
        client.cookies.set(COOKIE, value, path="/ui")
        assert (await client.get("/ui/orders")).status_code == 303
        client.cookies.clear()
    signed = await sign_in(client, "approver@test.bank")
    session_cookie = signed.cookies[COOKIE]
    as_api = await client.get(f"{API}/auth/me", headers=bearer(session_cookie))
    assert as_api.status_code == 401, "a page session is not an API token"


async def test_deactivating_a_user_ends_their_page_session(
    client: httpx.AsyncClient, cast: Cast, person: OpenPerson
) -> None:
    approver = await person("approver@test.bank")
    assert (await approver.get("/ui/orders")).status_code == 200
    deactivated = await client.post(
        f"{API}/users/{cast.ids['approver']}/deactivate", headers=cast["admin"]
    )
    assert deactivated.status_code == 200
    assert (await approver.get("/ui/orders")).status_code == 303


async def test_sign_out_ends_the_session_and_is_audited(
    person: OpenPerson, cast: Cast, owner_engine: AsyncEngine
) -> None:
    approver = await person("approver@test.bank")
    copied = approver.cookies[COOKIE]
    elsewhere = await person("approver@test.bank")  # the same person in another browser
    other_user = await person("approver.fi@test.bank")
    out = await post_form(approver, "/ui/orders", "/ui/sign-out")
    assert out.status_code == 303
    assert out.headers["location"] == "/ui/sign-in"
    assert (await approver.get("/ui/orders")).status_code == 303
    # Ended on the server: a copy of the cookie and the person's other sessions are refused.
    approver.cookies.set(COOKIE, copied)
    replayed = await approver.get("/ui/orders")
    assert replayed.status_code == 303
    assert replayed.headers["location"].startswith("/ui/sign-in")
    assert (await elsewhere.get("/ui/orders")).status_code == 303
    assert (await other_user.get("/ui/orders")).status_code == 200, "nobody else's"
    again = await person("approver@test.bank")
    assert (await again.get("/ui/orders")).status_code == 200
    async with owner_engine.connect() as conn:
        signed_out = text("SELECT actor FROM audit_events WHERE action = 'ui.signed_out'")
        actors = (await conn.execute(signed_out)).scalars().all()
    assert actors == [f"user:{cast.ids['approver']}"]


async def test_pages_forbid_other_origins_and_caching(person: OpenPerson) -> None:
    approver = await person("approver@test.bank")
    page = await approver.get("/ui/orders")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["cache-control"] == "no-store"
    assert '<script src="/ui/static/htmx.min.js"' in page.text
    assert "http://" not in page.text and "https://" not in page.text, "nothing from a CDN"
    htmx = await approver.get("/ui/static/htmx.min.js")
    assert htmx.status_code == 200
    assert 'version:"2.' in htmx.text


# --- the queue ----------------------------------------------------------------------------


async def test_approver_queue_shows_their_desks_orders_awaiting_a_decision(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, person: OpenPerson
) -> None:
    awaiting = await agent_order(client, cast, owner_engine)
    pending = await submit(client, cast["trader"], quantity=7)
    other_desk = await submit(client, cast["trader_fi"], **FI_ORDER)
    decided = await agent_order(client, cast, owner_engine)
    await client.post(
        f"{API}/orders/{decided}/reject", json={"reason": "no"}, headers=cast["approver"]
    )
    async with owner_engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE orders SET risk_status = 'FAILED',"
                ' risk_reasons = \'[{"code": "max_notional", "message": "Notional over'
                " the desk limit\"}]' WHERE id = :id"
            ),
            {"id": pending},
        )
    approver = await person("approver@test.bank")
    queue = await approver.get("/ui/orders")
    assert queue.status_code == 200
    shown = set(map(int, _row_ids(queue.text)))
    assert shown == {awaiting, pending}
    assert other_desk not in shown and decided not in shown
    assert "max_notional: Notional over the desk limit" in queue.text
    everything = await approver.get("/ui/orders", params={"status": ""})
    assert set(map(int, _row_ids(everything.text))) == {awaiting, pending, decided}
    failed = await approver.get("/ui/orders/rows", params={"risk_status": "FAILED"})
    assert set(map(int, _row_ids(failed.text))) == {pending}
    by_size = await approver.get("/ui/orders", params={"status": "REVIEWED", "symbol": "aapl"})
    assert set(map(int, _row_ids(by_size.text))) == {awaiting}


async def test_queue_polls_its_rows_with_the_same_filters(person: OpenPerson, cast: Cast) -> None:
    approver = await person("approver@test.bank")
    page = await approver.get("/ui/orders", params={"risk_status": "PASSED"})
    assert 'hx-get="/ui/orders/rows?status=awaiting&amp;risk_status=PASSED"' in page.text
    assert 'hx-trigger="orders-changed"' in page.text
    assert 'data-events="/ui/orders/events"' in page.text and "queue-events.js" in page.text
    rows = await approver.get(
        "/ui/orders/rows", params={"status": "awaiting", "risk_status": "PASSED"}
    )
    assert rows.status_code == 200
    assert rows.text.lstrip().startswith('<div class="scroll">'), "a fragment, not a page"


async def test_invalid_filters_are_a_422_page(person: OpenPerson, cast: Cast) -> None:
    approver = await person("approver@test.bank")
    page = await approver.get("/ui/orders", params={"status": "DROP TABLE"})
    assert page.status_code == 422
    assert "text/html" in page.headers["content-type"]


def _row_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-order-id="(\d+)">', html)


# --- an order and its decisions -----------------------------------------------------------


async def test_order_page_shows_the_order_its_price_advice_and_history(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, person: OpenPerson
) -> None:
    order_id = await agent_order(client, cast, owner_engine)
    price = {"symbol": "AAPL", "price": "193.10", "as_of": "2026-11-23T10:00:00Z", "source": "t"}
    published = await client.post(
        f"{API}/market-data/snapshots", json={"snapshots": [price]}, headers=cast["admin"]
    )
    assert published.status_code == 201
    approver = await person("approver@test.bank")
    page = await approver.get(f"/ui/orders/{order_id}")
    assert page.status_code == 200
    html = page.text
    assert "Client CUST-1001 (CUST-1001)" in html
    assert "AAPL, AAPL Inc." in html
    assert "9,627.50 USD" in html, "notional: 50 x 192.55"
    assert "193.10 USD" in html, "the latest price, to the instrument's tick of 0.01"
    assert "192.55 USD" in html, "the limit price"
    assert 'data-field="position-impact"' in html
    assert 'class="badge rec-approve">APPROVE' in html
    assert AGENT_ADVICE["note"] in unescape(html)
    assert "agent@test.bank (API key" in html, "who advised, by email and key"
    assert html.count('<span class="badge status-created">') == 1
    assert f'action="/ui/orders/{order_id}/approve"' in html
    assert "disabled" not in _form(html, "approve")


async def test_order_page_shows_the_position_now_and_after_the_order(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, person: OpenPerson
) -> None:
    held = await approved_order(client, cast, owner_engine, quantity=30)
    fill = {
        "quantity": "30",
        "price": "192.55",
        "venue": "XNAS",
        "executed_at": "2026-11-23T10:00:00Z",
        "external_id": "XNAS-UI-1",
    }
    recorded = await client.post(
        f"{API}/orders/{held}/executions", json=fill, headers=cast["admin"]
    )
    assert recorded.status_code == 201, recorded.text
    selling = await client.post(
        f"{API}/orders", json={**SEED_ORDER, "side": "SELL"}, headers=cast["trader"]
    )
    approver = await person("approver@test.bank")
    page = await approver.get(f"/ui/orders/{selling.json()['id']}")
    impact = re.search(r'data-field="position-impact">\s*(\S+) &rarr; (\S+)', page.text)
    assert impact is not None, page.text
    assert impact.groups() == ("30", "-20")  # long 30, selling 50: short 20 once filled


async def test_market_order_notional_uses_the_latest_price_or_says_it_is_unknown(
    client: httpx.AsyncClient, cast: Cast, person: OpenPerson
) -> None:
    order_id = await submit(client, cast["trader"], price=None, order_type="MARKET")
    approver = await person("approver@test.bank")
    assert "unknown: no price for AAPL yet" in (await approver.get(f"/ui/orders/{order_id}")).text
    price = {"symbol": "AAPL", "price": "200", "as_of": "2026-11-23T10:00:00Z", "source": "t"}
    await client.post(
        f"{API}/market-data/snapshots", json={"snapshots": [price]}, headers=cast["admin"]
    )
    page = (await approver.get(f"/ui/orders/{order_id}")).text
    assert "10,000.00 USD" in page and "at the latest price" in page


async def test_approver_approves_and_rejects_with_a_reason(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, person: OpenPerson
) -> None:
    first = await agent_order(client, cast, owner_engine)
    second = await agent_order(client, cast, owner_engine)
    approver = await person("approver@test.bank")
    page = f"/ui/orders/{first}"
    approved = await post_form(approver, page, f"{page}/approve", version="2", note="ok")
    assert approved.status_code == 303, approved.text
    assert approved.headers["location"] == f"/ui/orders/{first}?done=approved"
    confirmed = await approver.get(approved.headers["location"])
    assert f"Order #{first} approved." in confirmed.text
    assert await status_of(client, cast, first) == "APPROVED"

    page = f"/ui/orders/{second}"
    no_reason = await post_form(approver, page, f"{page}/reject", version="2", reason="  ")
    assert no_reason.status_code == 422
    assert "reason" in no_reason.text
    assert await status_of(client, cast, second) == "REVIEWED"
    rejected = await post_form(
        approver, page, f"{page}/reject", version="2", reason="Outside the mandate"
    )
    assert rejected.status_code == 303
    assert await status_of(client, cast, second) == "REJECTED"
    events = (await client.get(f"{API}/orders/{second}/events", headers=cast["risk"])).json()[
        "items"
    ]
    assert events[-1]["payload"] == {"reason": "Outside the mandate"}
    assert events[-1]["actor"] == f"user:{cast.ids['approver']}"


async def test_a_decision_on_an_order_that_changed_since_is_a_409_page(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, person: OpenPerson
) -> None:
    order_id = await agent_order(client, cast, owner_engine)
    approver = await person("approver@test.bank")
    page = f"/ui/orders/{order_id}"
    stale = await post_form(approver, page, f"{page}/approve", version="1")
    assert stale.status_code == 409
    assert "The order has changed since you read it" in stale.text
    assert f'href="/ui/orders/{order_id}"' in stale.text, "a way back to the order"
    assert await status_of(client, cast, order_id) == "REVIEWED"


async def test_post_without_or_with_a_wrong_csrf_token_changes_nothing(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, person: OpenPerson
) -> None:
    order_id = await agent_order(client, cast, owner_engine)
    approver = await person("approver@test.bank")
    for data in ({"version": "2"}, {"version": "2", "csrf_token": "forged"}):
        refused = await approver.post(f"/ui/orders/{order_id}/approve", data=data)
        assert refused.status_code == 403
        assert 'data-problem="csrf"' in refused.text
    assert await status_of(client, cast, order_id) == "REVIEWED"


async def test_a_token_from_another_session_is_refused(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, person: OpenPerson
) -> None:
    order_id = await agent_order(client, cast, owner_engine)
    mine = await person("approver@test.bank")
    theirs = await person("trader@test.bank")
    their_token = csrf_of((await theirs.get("/ui/orders")).text)
    refused = await mine.post(
        f"/ui/orders/{order_id}/approve", data={"csrf_token": their_token, "version": "2"}
    )
    assert refused.status_code == 403
    assert await status_of(client, cast, order_id) == "REVIEWED"


async def test_the_maker_sees_approve_disabled_and_cannot_approve(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, person: OpenPerson
) -> None:
    order_id = await agent_order(client, cast, owner_engine)
    await make_maker(owner_engine, order_id, cast.ids["approver"])
    approver = await person("approver@test.bank")
    page = f"/ui/orders/{order_id}"
    html = (await approver.get(page)).text
    assert "disabled" in _form(html, "approve")
    assert f"You submitted order {order_id}" in _form(html, "approve")
    refused = await post_form(approver, page, f"{page}/approve", version="2")
    assert refused.status_code == 403
    assert 'data-problem="maker-checker"' in refused.text
    assert await status_of(client, cast, order_id) == "REVIEWED"


@pytest.mark.parametrize(
    ("risk_status", "explanation"),
    [("FAILED", "failed its risk check"), ("PENDING", "waiting for its pre-trade risk check")],
)
async def test_approve_is_disabled_until_the_risk_check_passes(
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    person: OpenPerson,
    risk_status: str,
    explanation: str,
) -> None:
    order_id = await agent_order(client, cast, owner_engine)
    async with owner_engine.begin() as conn:
        await conn.execute(
            text("UPDATE orders SET risk_status = :risk WHERE id = :id"),
            {"risk": risk_status, "id": order_id},
        )
    approver = await person("approver@test.bank")
    html = (await approver.get(f"/ui/orders/{order_id}")).text
    assert "disabled" in _form(html, "approve")
    assert explanation in _form(html, "approve")
    assert "disabled" not in _form(html, "reject"), "a failed order may still be rejected"


async def test_an_order_not_yet_reviewed_can_be_reviewed_before_approval(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, person: OpenPerson
) -> None:
    order_id = await submit(client, cast["trader"])
    await pass_risk_check(owner_engine, order_id)
    approver = await person("approver@test.bank")
    page = f"/ui/orders/{order_id}"
    html = (await approver.get(page)).text
    assert "is PENDING: it needs a review first" in _form(html, "approve")
    reviewed = await post_form(
        approver, page, f"{page}/review", version="1", note="called the client"
    )
    assert reviewed.status_code == 303
    html = (await approver.get(page)).text
    assert "disabled" not in _form(html, "approve")
    assert "called the client" in html


async def test_another_desks_order_page_is_not_found(
    client: httpx.AsyncClient, cast: Cast, person: OpenPerson
) -> None:
    order_id = await submit(client, cast["trader_fi"], **FI_ORDER)
    approver = await person("approver@test.bank")
    page = await approver.get(f"/ui/orders/{order_id}")
    missing = await approver.get("/ui/orders/999999")
    assert page.status_code == missing.status_code == 404
    assert f"No order {order_id}." in page.text
    decided = await post_form(
        approver, "/ui/orders", f"/ui/orders/{order_id}/reject", version="1", reason="x"
    )
    assert decided.status_code == 404
    assert await status_of(client, cast, order_id) == "PENDING"


# --- roles: risk reads, traders cancel ----------------------------------------------------


async def test_risk_sees_every_desk_read_only_and_verifies_the_audit_trail(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, person: OpenPerson
) -> None:
    eq = await agent_order(client, cast, owner_engine)
    fi = await submit(client, cast["trader_fi"], **FI_ORDER)
    risk = await person("risk@test.bank")
    queue = await risk.get("/ui/orders")
    assert set(map(int, _row_ids(queue.text))) == {eq, fi}
    page = (await risk.get(f"/ui/orders/{eq}")).text
    assert '<form method="post" action="/ui/orders/' not in page, "no decision forms"
    assert 'data-field="read-only"' in page
    refused = await post_form(risk, f"/ui/orders/{eq}", f"/ui/orders/{eq}/approve", version="2")
    assert refused.status_code == 403
    assert await status_of(client, cast, eq) == "REVIEWED"
    assert 'href="/ui/audit"' in queue.text
    verified = await post_form(risk, "/ui/audit", "/ui/audit/verify")
    assert verified.status_code == 200
    assert "Verified: the audit trail is intact." in verified.text


async def test_audit_verification_is_for_risk_and_admin_only(person: OpenPerson) -> None:
    approver = await person("approver@test.bank")
    assert (await approver.get("/ui/audit")).status_code == 403
    queue = await approver.get("/ui/orders")
    assert 'href="/ui/audit"' not in queue.text
    refused = await approver.post("/ui/audit/verify", data={"csrf_token": csrf_of(queue.text)})
    assert refused.status_code == 403


async def test_trader_sees_only_their_own_orders_and_can_cancel(
    client: httpx.AsyncClient, cast: Cast, person: OpenPerson
) -> None:
    mine = await submit(client, cast["trader"])
    colleagues = await submit(client, cast["trader2"])
    trader = await person("trader@test.bank")
    queue = await trader.get("/ui/orders")
    assert "My orders" in queue.text
    assert set(map(int, _row_ids(queue.text))) == {mine}
    own = (await trader.get(f"/ui/orders/{mine}")).text
    assert "approve" not in _actions(own) and "reject" not in _actions(own)
    assert "disabled" not in _form(own, "cancel")
    their = (await trader.get(f"/ui/orders/{colleagues}")).text
    assert "maker or an approver may cancel" in _form(their, "cancel")
    page = f"/ui/orders/{mine}"
    cancelled = await post_form(trader, page, f"{page}/cancel", version="1", reason="client")
    assert cancelled.status_code == 303
    assert await status_of(client, cast, mine) == "CANCELLED"
    refused = await post_form(
        trader, f"/ui/orders/{colleagues}", f"/ui/orders/{colleagues}/cancel", version="1"
    )
    assert refused.status_code == 403
    assert await status_of(client, cast, colleagues) == "PENDING"


def _form(html: str, action: str) -> str:
    """The decision form for one action (approve, reject, …) as rendered."""
    start = html.index(f'class="action action-{action}"')
    return html[start : html.index("</form>", start)]


def _actions(html: str) -> set[str]:
    return set(re.findall(r'class="action action-(\w+)"', html))


# --- prices, the favicon, large approvals -------------------------------------------------


async def test_prices_are_written_to_the_instruments_tick(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, person: OpenPerson
) -> None:
    await make_instrument(owner_engine, "EURUSD", tick_size="0.0001")
    cents = await submit(client, cast["trader"], price="415.2")
    pips = await submit(client, cast["trader"], symbol="EURUSD", price="1.085")
    approver = await person("approver@test.bank")
    queue = (await approver.get("/ui/orders")).text
    prices = dict(re.findall(r'data-order-id="(\d+)">.*?data-field="price">([^<]+)<', queue, re.S))
    assert prices == {str(cents): "415.20", str(pips): "1.0850"}
    page = (await approver.get(f"/ui/orders/{pips}")).text
    assert re.search(r'data-field="limit-price">1.0850 USD<', page), page


async def test_the_favicon_is_linked_and_served_at_favicon_ico(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    sign_in_page = (await client.get("/ui/sign-in")).text
    assert '<link rel="icon" href="/ui/static/favicon.svg" type="image/svg+xml">' in sign_in_page
    linked = await client.get("/ui/static/favicon.svg")
    assert linked.status_code == 200 and linked.text.startswith("<svg")
    asked = await client.get("/favicon.ico")
    assert asked.status_code == 200, "browsers ask for it whatever the page links"
    assert asked.headers["content-type"].startswith("image/svg+xml")
    assert asked.content == linked.content


LARGE = {"quantity": 6000}  # 6,000 x 192.55 = 1,155,300.00 USD: above the 1,000,000 default


async def test_a_large_approval_needs_a_confirming_second_submit(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, person: OpenPerson
) -> None:
    order_id = await agent_order(client, cast, owner_engine, **LARGE)
    approver = await person("approver@test.bank")
    page = f"/ui/orders/{order_id}"
    assert 'data-field="asks-to-confirm"' in (await approver.get(page)).text
    first = await post_form(approver, page, f"{page}/approve", version="2", note="big one")
    assert first.status_code == 409, "asked to confirm, nothing approved"
    assert "The notional, 1,155,300.00 USD, is above 1,000,000.00 USD." in first.text
    assert f"Approving order #{order_id} needs your confirmation" in first.text
    assert '<input type="hidden" name="confirm" value="1">' in first.text
    assert ">big one</textarea>" in first.text, "the note is kept for the second submit"
    assert await status_of(client, cast, order_id) == "REVIEWED"
    confirmed = await approver.post(
        f"{page}/approve",
        data={"csrf_token": csrf_of(first.text), "version": "2", "note": "big one", "confirm": "1"},
    )
    assert confirmed.status_code == 303, confirmed.text
    assert await status_of(client, cast, order_id) == "APPROVED"
    events = (await client.get(f"{API}/orders/{order_id}/events", headers=cast["risk"])).json()[
        "items"
    ]
    assert events[-1]["payload"] == {"note": "big one"}


async def test_a_small_approval_or_a_refused_one_is_not_asked_to_confirm(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, person: OpenPerson
) -> None:
    small = await agent_order(client, cast, owner_engine)
    approver = await person("approver@test.bank")
    assert 'data-field="asks-to-confirm"' not in (await approver.get(f"/ui/orders/{small}")).text
    large = await agent_order(client, cast, owner_engine, **LARGE)
    stale = await post_form(
        approver, f"/ui/orders/{large}", f"/ui/orders/{large}/approve", version="1"
    )
    assert stale.status_code == 409
    assert "The order has changed since you read it" in stale.text, "refused before confirming"
    approved = await post_form(
        approver, f"/ui/orders/{small}", f"/ui/orders/{small}/approve", version="2"
    )
    assert approved.status_code == 303


async def test_an_order_needing_two_approvals_shows_who_gave_them(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    """The queue and the order page say "1 of 2 approvals" and who gave them; the second
    approver's button approves, the first's is disabled and a direct post is a 409 page."""
    policy = {"bands": [{"min_notional": "0", "approvals": 2}]}
    put = await client.put(f"{API}/desks/EQ-US/approval-policy", json=policy, headers=cast["risk"])
    assert put.status_code == 200, put.text
    await make_user(owner_engine, "approver2@test.bank", "approver", ["EQ-US"])
    order_id = await agent_order(client, cast, owner_engine)
    page = f"/ui/orders/{order_id}"
    async with AsyncExitStack() as stack:

        async def open_as(email: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            http = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://testserver")
            )
            assert (await sign_in(http, email)).status_code == 303
            return http

        first, second = await open_as("approver@test.bank"), await open_as("approver2@test.bank")
        assert "0 of 2 approvals" in (await first.get(page)).text
        recorded = await post_form(first, page, f"{page}/approve", version="2", note="fine")
        assert recorded.status_code == 303, recorded.text
        assert recorded.headers["location"] == f"{page}?done=approval-recorded"
        shown = unescape((await first.get(recorded.headers["location"])).text)
        assert "is recorded: 1 of 2 approvals" in shown
        assert "approver@test.bank <em>(you)</em>" in shown
        assert "disabled" in _form(shown, "approve")
        assert "You have already approved" in _form(shown, "approve")
        again = await post_form(first, page, f"{page}/approve", version="3")
        assert again.status_code == 409
        assert 'data-problem="approval-already-given"' in again.text
        queue = unescape((await second.get("/ui/orders")).text)
        assert "1 of 2 approvals: approver@test.bank" in queue
        assert "Yours is approval 2 of 2" in (await second.get(page)).text
        approved = await post_form(second, page, f"{page}/approve", version="3")
        assert approved.status_code == 303, approved.text
        assert approved.headers["location"] == f"{page}?done=approved"
    assert await status_of(client, cast, order_id) == "APPROVED"


async def test_replaced_orders_link_both_ways_and_leave_the_queue(
    client: httpx.AsyncClient, cast: Cast, person: OpenPerson
) -> None:
    old = await submit(client, cast["trader"])
    amended = await client.patch(
        f"{API}/orders/{old}", json={"quantity": "60"}, headers=cast["trader"]
    )
    assert amended.status_code == 201, amended.text
    new = amended.json()["id"]
    approver = await person("approver@test.bank")
    old_page = (await approver.get(f"/ui/orders/{old}")).text
    assert 'class="badge status-replaced" data-field="status">REPLACED' in old_page
    assert f'<a href="/ui/orders/{new}">replaced by #{new}</a>' in old_page
    new_page = (await approver.get(f"/ui/orders/{new}")).text
    assert f'<a href="/ui/orders/{old}">replaces #{old}</a>' in new_page
    for status in ("awaiting", ""):
        queue = await approver.get("/ui/orders", params={"status": status})
        assert set(map(int, _row_ids(queue.text))) == {new}, status
    assert '<option value="REPLACED"' not in queue.text
