"""Helpers for tests of the /ui pages: signing in through the form, arranging orders."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.factories import PASSWORD, SEED_ORDER

API = "/api/v1"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


async def sign_in(http: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    """Sign in as a person would: load the form (its CSRF token), post it."""
    form = await http.get("/ui/sign-in")
    assert form.status_code == 200, form.text
    return await http.post(
        "/ui/sign-in",
        data={"email": email, "password": password, "csrf_token": csrf_of(form.text)},
    )


async def submit(http: httpx.AsyncClient, headers: dict[str, str], **changes: Any) -> int:
    response = await http.post(f"{API}/orders", json={**SEED_ORDER, **changes}, headers=headers)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def review(
    http: httpx.AsyncClient, order_id: int, headers: dict[str, str], **body: Any
) -> None:
    response = await http.post(f"{API}/orders/{order_id}/review", json=body, headers=headers)
    assert response.status_code == 200, response.text


AGENT_ADVICE = {
    "recommendation": "APPROVE",
    "note": "Within CUST-1001's mandate; size is 0.4% of average daily volume.",
}
