"""Users, desks and API keys through the API and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import PASSWORD, SEED_ORDER, Cast, bearer

API = "/api/v1"


async def sign_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post(f"{API}/auth/token", data={"username": email, "password": password})


async def test_admin_creates_user_who_can_sign_in(client: httpx.AsyncClient, cast: Cast) -> None:
    body = {
        "email": "New.Trader@Test.Bank",
        "name": "New",
        "role": "trader",
        "desks": ["EQ-US"],
        "password": "a-long-enough-password",
    }
    created = await client.post(f"{API}/users", json=body, headers=cast["admin"])
    assert created.status_code == 201, created.text
    user = created.json()
    assert (user["email"], user["desks"], user["active"]) == (
        "new.trader@test.bank",
        ["EQ-US"],
        True,
    )
    assert "password" not in created.text and "argon2" not in created.text
    token = await sign_in(client, "new.trader@test.bank", "a-long-enough-password")
    assert token.status_code == 200
    me = await client.get(f"{API}/auth/me", headers=bearer(token.json()["access_token"]))
    assert me.json()["email"] == "new.trader@test.bank"
    again = await client.post(f"{API}/users", json=body, headers=cast["admin"])
    assert again.status_code == 409
    listed = await client.get(f"{API}/users", headers=cast["admin"])
    assert "argon2" not in listed.text
    assert any(u["email"] == "new.trader@test.bank" for u in listed.json())


async def test_short_password_and_unknown_desk_are_422(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    short = {"email": "x@test.bank", "name": "X", "role": "trader", "password": "short"}
    assert (await client.post(f"{API}/users", json=short, headers=cast["admin"])).status_code == 422
    desk = {"email": "y@test.bank", "name": "Y", "role": "trader", "desks": ["NOPE"]}
    assert (await client.post(f"{API}/users", json=desk, headers=cast["admin"])).status_code == 422


async def test_new_desk_membership_applies_on_next_request(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    fi_order = await client.post(
        f"{API}/orders", json={**SEED_ORDER, "client_id": "CUST-2001"}, headers=cast["trader_fi"]
    )
    order_url = f"{API}/orders/{fi_order.json()['id']}"
    assert (await client.get(order_url, headers=cast["trader"])).status_code == 404
    moved = await client.put(
        f"{API}/users/{cast.ids['trader']}/desks",
        json={"desks": ["EQ-US", "FI-EU"]},
        headers=cast["admin"],
    )
    assert moved.json()["desks"] == ["EQ-US", "FI-EU"]
    assert (await client.get(order_url, headers=cast["trader"])).status_code == 200


async def test_deactivated_user_loses_tokens_and_keys(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    key = await client.post(
        f"{API}/api-keys", json={"name": "mine", "scopes": ["orders:read"]}, headers=cast["trader"]
    )
    assert key.status_code == 201
    done = await client.post(f"{API}/users/{cast.ids['trader']}/deactivate", headers=cast["admin"])
    assert done.json()["active"] is False
    assert (await client.get(f"{API}/auth/me", headers=cast["trader"])).status_code == 401
    assert (
        await client.get(f"{API}/auth/me", headers=bearer(key.json()["key"]))
    ).status_code == 401
    assert (await sign_in(client, "trader@test.bank", PASSWORD)).status_code == 401


async def test_api_key_lifecycle(
    app: FastAPI, client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    created = await client.post(
        f"{API}/api-keys",
        json={"name": "desk bot", "scopes": ["orders:read", "orders:write"]},
        headers=cast["trader"],
    )
    assert created.status_code == 201, created.text
    secret = created.json()["key"]
    assert secret.startswith("tro_")
    listed = await client.get(f"{API}/api-keys", headers=cast["trader"])
    assert secret not in listed.text
    assert [k["name"] for k in listed.json()] == ["desk bot"]

    via_header = await client.get(f"{API}/auth/me", headers={"X-API-Key": secret})
    me = via_header.json()
    assert (me["email"], me["api_key_id"], me["scopes"]) == (
        "trader@test.bank",
        created.json()["id"],
        ["orders:read", "orders:write"],
    )
    # Its use is noted, not written, by authentication (which may run on a read replica);
    # the process writes the noted keys on the primary every few seconds, or now.
    await app.state.key_usage.flush(app.state.db)
    async with owner_engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT hash, last_used_at FROM api_keys WHERE id = :id"),
                {"id": created.json()["id"]},
            )
        ).one()
    assert stored.hash != secret and secret not in stored.hash
    assert stored.last_used_at is not None

    other = await client.delete(f"{API}/api-keys/{created.json()['id']}", headers=cast["trader2"])
    assert other.status_code == 404, "someone else's key is not found, not revoked"
    revoked = await client.delete(f"{API}/api-keys/{created.json()['id']}", headers=cast["trader"])
    assert revoked.json()["revoked_at"] is not None
    after = await client.get(f"{API}/auth/me", headers=bearer(secret))
    assert after.status_code == 401
    assert after.headers["www-authenticate"].startswith("Bearer")


async def test_only_admin_creates_keys_for_others_and_keys_cannot_make_keys(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    body = {"name": "agent key", "scopes": ["orders:write"], "owner_email": "agent@test.bank"}
    assert (
        await client.post(f"{API}/api-keys", json=body, headers=cast["trader"])
    ).status_code == 403
    made = await client.post(f"{API}/api-keys", json=body, headers=cast["admin"])
    assert made.status_code == 201 and made.json()["owner_email"] == "agent@test.bank"
    from_key = await client.post(
        f"{API}/api-keys", json={"name": "x", "scopes": ["orders:read"]}, headers=cast["agent"]
    )
    assert from_key.status_code == 403
    bad_scope = {"name": "x", "scopes": ["orders:approve"]}
    assert (
        await client.post(f"{API}/api-keys", json=bad_scope, headers=cast["trader"])
    ).status_code == 422


def run_cli(
    database_url: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRADEOPS_DATABASE_URL": database_url, "TRADEOPS_ENV": "test"}
    return subprocess.run(
        [sys.executable, "-m", "tradeops.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


async def test_cli_creates_users_and_prints_key_secret_last(
    client: httpx.AsyncClient, cast: Cast, database_url: str
) -> None:
    user = run_cli(
        database_url,
        "users",
        "create",
        "--email",
        "cli.agent@test.bank",
        "--role",
        "agent",
        "--desk",
        "EQ-US",
    )
    assert user.returncode == 0, user.stderr
    person = run_cli(
        database_url,
        "users",
        "create",
        "--email",
        "cli.trader@test.bank",
        "--role",
        "trader",
        "--desk",
        "EQ-US",
        "--password-stdin",
        stdin="cli-password-123\n",
    )
    assert person.returncode == 0, person.stderr
    assert (await sign_in(client, "cli.trader@test.bank", "cli-password-123")).status_code == 200
    listed = run_cli(database_url, "users", "list")
    assert "cli.agent@test.bank" in listed.stdout

    key = run_cli(
        database_url,
        "api-keys",
        "create",
        "--user",
        "cli.agent@test.bank",
        "--name",
        "cli",
        "--scopes",
        "orders:read,orders:write",
        "--desks",
        "EQ-US",
        "--expires-days",
        "30",
    )
    assert key.returncode == 0, key.stderr
    secret = key.stdout.strip().splitlines()[-1]
    assert secret.startswith("tro_") and " " not in secret
    me = await client.get(f"{API}/auth/me", headers=bearer(secret))
    assert me.status_code == 200
    assert me.json()["role"] == "agent"


async def test_a_key_made_to_expire_in_days_expires_that_many_days_after_it_was_made(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    body = {"name": "short-lived", "scopes": ["orders:read"], "expires_in_days": 3}
    created = await client.post(f"{API}/api-keys", json=body, headers=cast["trader"])
    assert created.status_code == 201, created.text
    made, expires = (
        datetime.fromisoformat(created.json()[k]) for k in ("created_at", "expires_at")
    )
    assert expires - made == timedelta(days=3)  # both the transaction's now()
    forever = await client.post(
        f"{API}/api-keys", json=body | {"expires_in_days": None}, headers=cast["trader"]
    )
    assert forever.status_code == 201, forever.text
    assert forever.json()["expires_at"] is None
