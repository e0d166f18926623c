"""An order needing two approvals at the /ui pages in a real browser: the first approver's
approval is recorded ("1 of 2 approvals"), their button is then disabled with why, and the
second approver's approval makes the order APPROVED."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import Browser, expect
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.e2e.test_approver_pages import agent_order, sign_in, status_of
from tests.factories import Cast, make_user
from tests.live import LiveServer
from tests.pages import API

pytestmark = pytest.mark.slow


async def test_two_approvers_approve_an_order_needing_two(
    browser: Browser,
    live_server: LiveServer,
    client: httpx.AsyncClient,
    cast: Cast,
    owner_engine: AsyncEngine,
) -> None:
    policy = {
        "bands": [{"min_notional": "0", "approvals": 1}, {"min_notional": "5000", "approvals": 2}]
    }
    put = await client.put(f"{API}/desks/EQ-US/approval-policy", json=policy, headers=cast["risk"])
    assert put.status_code == 200, put.text
    await make_user(owner_engine, "approver2@test.bank", "approver", ["EQ-US"])
    order_id = await agent_order(client, cast, owner_engine)  # 9,627.50 USD: two approvals

    first = await browser.new_context(base_url=live_server.url)
    second = await browser.new_context(base_url=live_server.url)
    try:
        page = await first.new_page()
        await sign_in(page, "approver@test.bank")
        row = page.locator(f'#queue tr[data-order-id="{order_id}"]')
        await expect(row.locator('[data-field="approvals"]')).to_have_text("0 of 2 approvals")
        await page.goto(f"/ui/orders/{order_id}")
        await expect(page.locator('[data-field="approval-count"]')).to_contain_text(
            "Yours is approval 1 of 2"
        )
        await page.get_by_label("Note (optional)").fill("Within the mandate")
        await page.get_by_role("button", name="Approve").click()
        await expect(page.get_by_role("status")).to_have_text(
            f"Your approval of order #{order_id} is recorded: 1 of 2 approvals."
        )
        approvals = page.locator('dd[data-field="approvals"]')
        await expect(approvals).to_contain_text("1 of 2 approvals")
        await expect(approvals).to_contain_text("approver@test.bank (you)")
        await expect(approvals).to_contain_text("Within the mandate")
        await expect(page.get_by_role("button", name="Approve")).to_be_disabled()
        await expect(page.locator('[data-refusal="approve"]')).to_contain_text(
            "You have already approved"
        )
        assert await status_of(client, cast, order_id) == "REVIEWED"

        other = await second.new_page()
        await sign_in(other, "approver2@test.bank")
        row = other.locator(f'#queue tr[data-order-id="{order_id}"]')
        await expect(row.locator('[data-field="approvals"]')).to_have_text(
            "1 of 2 approvals: approver@test.bank"
        )
        await other.goto(f"/ui/orders/{order_id}")
        await other.get_by_role("button", name="Approve").click()
        await expect(other.get_by_role("status")).to_have_text(f"Order #{order_id} approved.")
        await expect(other.locator('dd[data-field="approvals"]')).to_contain_text(
            "2 of 2 approvals"
        )
        assert await status_of(client, cast, order_id) == "APPROVED"
    finally:
        await first.close()
        await second.close()
