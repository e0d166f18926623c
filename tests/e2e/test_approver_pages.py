"""An approver and a maker at the /ui pages in a real browser, against a live server on the
test database. Orders are arranged through the API as an agent submits them.

Screenshots of the queue and of an order page land in tests/artifacts (git-ignored); the
ones in docs/ come from test_pages_fit_the_screen.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import PASSWORD, Cast, make_maker, pass_risk_check
from tests.live import LiveServer
from tests.pages import AGENT_ADVICE, API, review, submit
from tradeops.jobs.app import run_worker
from tradeops.settings import Settings

pytestmark = pytest.mark.slow

PRICES = {
    "snapshots": [
        {"symbol": "AAPL", "price": "193.10", "as_of": "2026-11-23T14:30:00Z", "source": "feed"},
        {"symbol": "MSFT", "price": "421.35", "as_of": "2026-11-23T14:30:00Z", "source": "feed"},
    ]
}


async def agent_order(
    client: httpx.AsyncClient, cast: Cast, engine: AsyncEngine, **order: object
) -> int:
    order_id = await submit(client, cast["agent"], **order)
    await pass_risk_check(engine, order_id)
    await review(client, order_id, cast["agent"], **AGENT_ADVICE)
    return order_id


async def run_risk_checks(database_url: str, settings: Settings) -> None:
    """The worker runs the pre-trade checks the orders so far queued, then stops."""
    await run_worker(database_url, wait=False, install_signal_handlers=False, settings=settings)


async def sign_in(page: Page, email: str) -> None:
    await page.goto("/ui/orders")
    await expect(page).to_have_url("/ui/sign-in?next=/ui/orders", ignore_case=True)
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", level=1)).to_be_visible()


async def status_of(client: httpx.AsyncClient, cast: Cast, order_id: int) -> str:
    return str(
        (await client.get(f"{API}/orders/{order_id}", headers=cast["risk"])).json()["status"]
    )


async def test_approver_approves_an_agents_order_and_rejects_another_with_a_reason(
    page: Page,
    live_server: LiveServer,
    client: httpx.AsyncClient,
    cast: Cast,
    database_url: str,
    settings: Settings,
    artifacts: Path,
) -> None:
    published = await client.post(
        f"{API}/market-data/snapshots", json=PRICES, headers=cast["admin"]
    )
    assert published.status_code == 201, published.text
    # Orders as agents and traders send them; then the real pre-trade check runs on each.
    first = await submit(client, cast["agent"])
    second = await submit(
        client,
        cast["agent"],
        client_id="CUST-1002",
        symbol="MSFT",
        side="SELL",
        quantity=120,
        price="421.50",
    )
    await submit(client, cast["trader"], quantity=5000, price="250.00")  # a fat finger
    await run_risk_checks(database_url, settings)
    for order_id in (first, second):
        await review(client, order_id, cast["agent"], **AGENT_ADVICE)
    await submit(
        client, cast["trader2"], symbol="MSFT", quantity=75, price=None, order_type="MARKET"
    )

    await sign_in(page, "approver@test.bank")
    queue = page.locator("#queue")
    await expect(queue.locator("tbody tr")).to_have_count(4)
    await expect(queue).to_contain_text("PRICE_AWAY_FROM_MARKET: Limit price 250 is 29.47% away")
    # A short viewport: the full-page screenshot is then as tall as the content.
    await page.set_viewport_size({"width": 1360, "height": 480})
    await page.screenshot(path=artifacts / "queue.png", full_page=True)

    await queue.get_by_role("link", name=f"#{first}").click()
    await expect(page).to_have_url(f"{live_server.url}/ui/orders/{first}")
    advice = page.locator('[data-field="recommendation"]')
    await expect(advice).to_contain_text("APPROVE")
    await expect(advice).to_contain_text(AGENT_ADVICE["note"])
    await expect(advice).to_contain_text("agent@test.bank")
    await expect(page.locator('[data-field="notional"]')).to_contain_text("9,627.50 USD")
    await expect(page.locator('[data-field="latest-price"]')).to_contain_text("193.10 USD")
    await page.screenshot(path=artifacts / "order.png", full_page=True)

    await page.get_by_label("Note (optional)").fill("Checked with the desk")
    await page.get_by_role("button", name="Approve").click()
    await expect(page.get_by_role("status")).to_have_text(f"Order #{first} approved.")
    await expect(page.locator('h1 [data-field="status"]')).to_have_text("APPROVED")
    assert await status_of(client, cast, first) == "APPROVED"

    await page.goto(f"/ui/orders/{second}")
    reject = page.get_by_role("button", name="Reject")
    await reject.click()  # no reason: the browser refuses to send the form
    await expect(page).to_have_url(f"{live_server.url}/ui/orders/{second}")
    assert await status_of(client, cast, second) == "REVIEWED"
    await page.get_by_label("Reason (required)").fill("Client mandate excludes MSFT this week")
    await reject.click()
    await expect(page.get_by_role("status")).to_have_text(f"Order #{second} rejected.")
    await expect(page.locator(".history")).to_contain_text("Client mandate excludes MSFT this week")
    assert await status_of(client, cast, second) == "REJECTED"


async def test_the_maker_cannot_approve_their_own_order(
    page: Page, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    order_id = await agent_order(client, cast, owner_engine)
    # The approver made it, as through their own key.
    await make_maker(owner_engine, order_id, cast.ids["approver"])
    await sign_in(page, "approver@test.bank")
    await page.locator("#queue").get_by_role("link", name=f"#{order_id}").click()
    approve = page.get_by_role("button", name="Approve")
    await expect(approve).to_be_disabled()
    await expect(page.locator('[data-refusal="approve"]')).to_contain_text(
        f"You submitted order {order_id}"
    )
    assert await status_of(client, cast, order_id) == "REVIEWED"


async def test_a_trader_sees_their_order_without_an_approve_button_and_cancels_it(
    page: Page, client: httpx.AsyncClient, cast: Cast
) -> None:
    order_id = await submit(client, cast["trader"])
    await submit(client, cast["trader2"])
    await sign_in(page, "trader@test.bank")
    await expect(page.get_by_role("heading", level=1)).to_have_text("My orders")
    await expect(page.locator("#queue tbody tr")).to_have_count(1)
    await page.locator("#queue").get_by_role("link", name=f"#{order_id}").click()
    await expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    await page.get_by_role("button", name="Cancel order").click()
    await expect(page.get_by_role("status")).to_have_text(f"Order #{order_id} cancelled.")
    assert await status_of(client, cast, order_id) == "CANCELLED"


async def test_the_queue_shows_new_orders_without_a_reload(
    page: Page, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await sign_in(page, "approver@test.bank")
    await expect(page.locator("#queue")).to_contain_text("No orders await a decision")
    await expect(page.locator("#queue")).to_have_attribute("data-live", "stream")
    order_id = await agent_order(client, cast, owner_engine)
    # The order's events arrive over the event stream and the rows are fetched again: well
    # within the 5 s the page would otherwise poll at.
    await expect(page.locator(f'#queue tr[data-order-id="{order_id}"]')).to_be_visible(
        timeout=3_000
    )


async def test_the_queue_polls_when_the_event_stream_is_refused(
    page: Page, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    await page.route("**/ui/orders/events", lambda route: route.fulfill(status=503))
    await sign_in(page, "approver@test.bank")
    await expect(page.locator("#queue")).to_have_attribute("data-live", "polling")
    order_id = await agent_order(client, cast, owner_engine)
    await expect(page.locator(f'#queue tr[data-order-id="{order_id}"]')).to_be_visible(
        timeout=15_000
    )
