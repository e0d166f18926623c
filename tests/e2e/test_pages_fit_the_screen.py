"""The pages on a phone (390 px wide) and a laptop (1280 px): nothing scrolls sideways, Sign out
stays in reach, and a large approval asks for a confirming second click.

Screenshots land in tests/artifacts; with TRADEOPS_DOCS_SCREENSHOT=1 they also replace
docs/ui-queue-390.png and docs/ui-queue-1280.png.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.e2e.test_approver_pages import PRICES, agent_order, sign_in, status_of
from tests.factories import Cast
from tests.live import LiveServer
from tests.pages import API, submit

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs"
PHONE, LAPTOP = 390, 1280
FAILED_CHECK = (
    "UPDATE orders SET risk_status = 'FAILED', risk_reasons = '[{\"code\":"
    ' "PRICE_AWAY_FROM_MARKET", "message": "Limit price 250 is 29.47% away from the latest'
    " price 193.10\"}]' WHERE id = :id"
)


async def a_busy_queue(client: httpx.AsyncClient, cast: Cast, engine: AsyncEngine) -> None:
    """Orders as the approver's morning looks: advised, pending, one failing its check."""
    published = await client.post(
        f"{API}/market-data/snapshots", json=PRICES, headers=cast["admin"]
    )
    assert published.status_code == 201, published.text
    await agent_order(client, cast, engine)
    await agent_order(client, cast, engine, symbol="MSFT", side="SELL", quantity=120, price="421.5")
    fat_finger = await submit(client, cast["trader"], quantity=5000, price="250")
    async with engine.begin() as conn:
        await conn.execute(text(FAILED_CHECK), {"id": fat_finger})
    await submit(
        client, cast["trader2"], symbol="MSFT", quantity=75, price=None, order_type="MARKET"
    )


async def page_width(page: Page) -> int:
    """How wide the document is: more than the viewport means it scrolls sideways."""
    width: int = await page.evaluate("document.documentElement.scrollWidth")
    return width


async def screenshot(page: Page, artifacts: Path, name: str, *, docs: bool = False) -> None:
    await page.screenshot(path=artifacts / name, full_page=True)
    if docs and os.environ.get("TRADEOPS_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(artifacts / name, DOCS / name)


@pytest.mark.parametrize("width", [PHONE, LAPTOP])
async def test_the_queue_fits_the_screen_and_sign_out_is_in_reach(
    page: Page,
    live_server: LiveServer,
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
    artifacts: Path,
    width: int,
) -> None:
    await a_busy_queue(client, cast, owner_engine)
    await page.set_viewport_size({"width": width, "height": 800})
    await sign_in(page, "approver@test.bank")
    await expect(page.locator("#queue tbody tr")).to_have_count(4)
    assert await page_width(page) <= width, "the queue scrolls sideways"
    if width == LAPTOP:  # the whole table in view, without scrolling inside its box either
        table = await page.locator("#queue table").bounding_box()
        assert table is not None and table["x"] + table["width"] <= width
    else:  # each order a card: its price and risk reasons readable without scrolling
        price = page.locator('#queue tr td[data-field="price"]').first
        await expect(price).to_be_in_viewport()
        await expect(page.locator("#queue .reasons")).to_contain_text("PRICE_AWAY_FROM_MARKET")
    await screenshot(page, artifacts, f"ui-queue-{width}.png", docs=True)

    order_link = page.locator("#queue tbody tr a").last  # the oldest: advised, priced
    await order_link.click()
    await expect(page.locator('[data-field="notional"]')).to_be_visible()
    assert await page_width(page) <= width, "the order page scrolls sideways"
    await screenshot(page, artifacts, f"ui-order-{width}.png")

    sign_out = page.get_by_role("button", name="Sign out")
    await expect(sign_out).to_be_in_viewport(ratio=1)
    await sign_out.click()
    await expect(page).to_have_url(f"{live_server.url}/ui/sign-in")


async def test_a_large_approval_asks_to_confirm_before_it_is_made(
    page: Page, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine, artifacts: Path
) -> None:
    order_id = await agent_order(client, cast, owner_engine, quantity=6000)  # 1,155,300 USD
    await page.set_viewport_size({"width": PHONE, "height": 800})
    await sign_in(page, "approver@test.bank")
    await page.goto(f"/ui/orders/{order_id}")
    await expect(page.locator('[data-field="asks-to-confirm"]')).to_be_visible()
    await page.get_by_label("Note (optional)").fill("Block trade agreed with the client")
    await page.get_by_role("button", name="Approve").click()

    await expect(page.get_by_role("alert")).to_contain_text("needs your confirmation")
    asking = page.locator('[data-field="confirm-approval"]')
    await expect(asking).to_contain_text("The notional, 1,155,300.00 USD, is above 1,000,000.00")
    assert await status_of(client, cast, order_id) == "REVIEWED", "nothing approved yet"
    await asking.scroll_into_view_if_needed()
    await page.screenshot(path=artifacts / "ui-confirm-390.png")
    await expect(page.get_by_label("Note (optional)")).to_have_value(
        "Block trade agreed with the client"
    )
    await page.get_by_role("button", name="Confirm approval").click()
    await expect(page.get_by_role("status")).to_have_text(f"Order #{order_id} approved.")
    assert await status_of(client, cast, order_id) == "APPROVED"
