"""Access tokens under attack, external (OIDC) tokens, and signing in with a password.

Every refused token must be a 401 problem document with a Bearer challenge, whatever is
wrong with it: a forged algorithm, a wrong key, a stale or foreign claim, or a user who is
gone.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import PASSWORD, Cast, bearer
from tradeops.app import create_app
from tradeops.auth import tokens
from tradeops.auth.sign_in import email_key
from tradeops.auth.tokens import LEEWAY_SECONDS
from tradeops.settings import Settings

API = "/api/v1"
ME = f"{API}/auth/me"
PROBLEM = "application/problem+json"
OIDC_ISSUER = "https://idp.test.bank"
OIDC_AUDIENCE = "tradeops-oidc"
KID = "idp-key-1"
ATTACKER_SECRET = "an-attackers-own-secret-of-32-bytes-or-more"
MISSING = object()


# --- helpers -------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def unb64url_json(segment: str) -> dict[str, Any]:
    return dict(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))))


def claims(issuer: str, audience: str, **changes: Any) -> dict[str, Any]:
    """A complete, currently valid claim set; pass MISSING to drop a claim."""
    now = int(time.time())
    base: dict[str, Any] = {"iss": issuer, "aud": audience, "iat": now, "exp": now + 300}
    base.update(changes)
    return {name: value for name, value in base.items() if value is not MISSING}


def own_claims(settings: Settings, user_id: int, **changes: Any) -> dict[str, Any]:
    return claims(settings.jwt_issuer, settings.jwt_audience, **{"sub": str(user_id), **changes})


def sign_own(settings: Settings, payload: dict[str, Any], secret: str | None = None) -> str:
    key = secret or settings.secret_key.get_secret_value()
    return jwt.encode(payload, key, algorithm="HS256")


def hs256_by_hand(payload: dict[str, Any], secret: bytes, header: dict[str, Any]) -> str:
    """HS256 computed directly, since PyJWT rightly refuses a PEM key as an HMAC secret."""
    signing_input = f"{b64url_json(header)}.{b64url_json(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def unsigned(payload: dict[str, Any]) -> str:
    return f"{b64url_json({'alg': 'none', 'typ': 'JWT'})}.{b64url_json(payload)}."


async def sign_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post(f"{API}/auth/token", data={"username": email, "password": password})


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get(ME, headers=bearer(token))


def assert_unauthenticated(response: httpx.Response, slug: str = "unauthenticated") -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == 401
    assert problem["type"].endswith(f"/{slug}")
    assert response.headers["www-authenticate"].startswith("Bearer")


# --- our own tokens ------------------------------------------------------------------------


async def test_token_from_sign_in_works_for_me(client: httpx.AsyncClient, cast: Cast) -> None:
    signed_in = await sign_in(client, "trader@test.bank", PASSWORD)
    assert signed_in.status_code == 200, signed_in.text
    body = signed_in.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60
    response = await me(client, body["access_token"])
    assert response.status_code == 200
    assert (response.json()["user_id"], response.json()["role"]) == (cast.ids["trader"], "trader")


async def test_hand_made_token_with_all_claims_is_accepted(
    client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    """The baseline the attacks below start from: these claims and this key do work."""
    token = sign_own(settings, own_claims(settings, cast.ids["trader"]))
    assert (await me(client, token)).status_code == 200


async def test_alg_none_token_is_refused(
    client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    assert_unauthenticated(await me(client, unsigned(own_claims(settings, cast.ids["admin"]))))


async def test_token_signed_with_another_secret_is_refused(
    client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    token = sign_own(settings, own_claims(settings, cast.ids["trader"]), ATTACKER_SECRET)
    assert_unauthenticated(await me(client, token))


async def test_expired_token_is_refused(
    client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    now = int(time.time())
    payload = own_claims(settings, cast.ids["trader"], iat=now - 600, exp=now - 60)
    assert_unauthenticated(await me(client, sign_own(settings, payload)), "token-expired")


async def test_token_just_expired_within_leeway_is_accepted(
    client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    now = int(time.time())
    payload = own_claims(settings, cast.ids["trader"], iat=now - 600, exp=now - 5)
    assert (await me(client, sign_own(settings, payload))).status_code == 200


async def test_token_not_yet_valid_is_refused(
    client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    payload = own_claims(settings, cast.ids["trader"], nbf=int(time.time()) + 600)
    assert_unauthenticated(await me(client, sign_own(settings, payload)))


async def test_token_for_another_audience_is_refused(
    client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    payload = own_claims(settings, cast.ids["trader"], aud="some-other-api")
    assert_unauthenticated(await me(client, sign_own(settings, payload)))


async def test_token_from_another_issuer_is_refused(
    client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    payload = own_claims(settings, cast.ids["trader"], iss="someone-else")
    assert_unauthenticated(await me(client, sign_own(settings, payload)))


@pytest.mark.parametrize("claim", ["sub", "exp", "iat", "iss", "aud"])
async def test_token_missing_a_required_claim_is_refused(
    client: httpx.AsyncClient, cast: Cast, settings: Settings, claim: str
) -> None:
    payload = own_claims(settings, cast.ids["trader"], **{claim: MISSING})
    assert_unauthenticated(await me(client, sign_own(settings, payload)))


async def test_token_with_non_numeric_subject_is_refused(
    client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    payload = own_claims(settings, cast.ids["trader"], sub="trader@test.bank")
    assert_unauthenticated(await me(client, sign_own(settings, payload)))


async def test_tampered_payload_is_refused(
    client: httpx.AsyncClient, cast: Cast, app: FastAPI
) -> None:
    token, _ = app.state.tokens.issue(cast.ids["trader"], "trader")
    assert (await me(client, token)).status_code == 200
    header, payload, signature = token.split(".")
    forged = {**unb64url_json(payload), "sub": str(cast.ids["admin"]), "role": "admin"}
    assert_unauthenticated(await me(client, f"{header}.{b64url_json(forged)}.{signature}"))


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens PyJWT decodes (each decoding of each), from now on."""
    decoded: list[str] = []
    decode = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return decoded


async def test_a_token_seen_before_is_not_decoded_again(
    client: httpx.AsyncClient, cast: Cast, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = count_decodes(monkeypatch)
    token, _ = app.state.tokens.issue(cast.ids["trader"], "trader")
    assert (await me(client, token)).status_code == 200
    first = len(decoded)
    assert first > 0
    for _ in range(3):
        assert (await me(client, token)).json()["user_id"] == cast.ids["trader"]
    assert len(decoded) == first


async def test_a_token_seen_before_is_refused_once_it_expires(
    client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    """Kept or not, a token is good until its exp plus the leeway, and not a moment after."""
    expires = int(time.time()) + 2  # good for one to two more seconds, leeway included
    payload = own_claims(settings, cast.ids["trader"], exp=expires - LEEWAY_SECONDS)
    token = sign_own(settings, payload)
    assert (await me(client, token)).status_code == 200
    await asyncio.sleep(expires - time.time() + 0.2)
    assert_unauthenticated(await me(client, token), "token-expired")


async def test_the_tokens_kept_are_the_latest_few(
    client: httpx.AsyncClient, cast: Cast, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "OWN_TOKENS_KEPT", 2)
    decoded = count_decodes(monkeypatch)
    oldest, older, newest = (
        app.state.tokens.issue(cast.ids["trader"], "trader")[0] for _ in range(3)
    )
    for token in (oldest, older, newest, newest, older):
        assert (await me(client, token)).status_code == 200
    kept_twice = len(decoded)
    assert (await me(client, oldest)).status_code == 200
    assert len(decoded) > kept_twice  # the oldest was let go, and decoded again


@pytest.mark.parametrize(
    "credential",
    ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9..", "tro_abcdefghijkl_notarealsecret"],
)
async def test_garbage_credential_is_refused(
    client: httpx.AsyncClient, cast: Cast, credential: str
) -> None:
    assert_unauthenticated(await me(client, credential))


async def test_token_for_a_user_that_does_not_exist_is_refused(
    client: httpx.AsyncClient, cast: Cast, app: FastAPI
) -> None:
    token, _ = app.state.tokens.issue(987654, "admin")
    assert_unauthenticated(await me(client, token))


async def test_token_for_the_system_user_is_refused(
    client: httpx.AsyncClient, cast: Cast, app: FastAPI
) -> None:
    token, _ = app.state.tokens.issue(0, "system")
    assert_unauthenticated(await me(client, token))


async def test_valid_token_of_a_deactivated_user_is_refused(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    assert (await client.get(ME, headers=cast["trader"])).status_code == 200
    async with owner_engine.begin() as conn:
        await conn.execute(
            text("UPDATE users SET active = false WHERE id = :id"), {"id": cast.ids["trader"]}
        )
    assert_unauthenticated(await client.get(ME, headers=cast["trader"]))


async def test_role_claim_is_not_trusted_the_database_role_is(
    client: httpx.AsyncClient, cast: Cast, app: FastAPI
) -> None:
    token, _ = app.state.tokens.issue(cast.ids["trader"], "admin")
    assert (await me(client, token)).json()["role"] == "trader"
    assert (await client.get(f"{API}/users", headers=bearer(token))).status_code == 403


# --- an external identity provider (OIDC) --------------------------------------------------


@pytest.fixture(scope="module")
def idp_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
async def oidc_client(
    settings: Settings, database_url: str, tmp_path: Path, idp_key: rsa.RSAPrivateKey
) -> AsyncIterator[httpx.AsyncClient]:
    """The app configured to accept the test identity provider's RS256 tokens."""
    jwk = RSAAlgorithm.to_jwk(idp_key.public_key(), as_dict=True)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]}))
    configured = settings.model_copy(
        update={
            "oidc_issuer": OIDC_ISSUER,
            "oidc_audience": OIDC_AUDIENCE,
            "oidc_jwks_file": jwks,
        }
    )
    app = create_app(configured, database_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


def idp_claims(address: str, **changes: Any) -> dict[str, Any]:
    return claims(OIDC_ISSUER, OIDC_AUDIENCE, **{"sub": "idp-42", "email": address, **changes})


def idp_token(key: rsa.RSAPrivateKey, payload: dict[str, Any], kid: str = KID) -> str:
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


async def test_oidc_token_for_a_known_email_is_accepted(
    oidc_client: httpx.AsyncClient, cast: Cast, idp_key: rsa.RSAPrivateKey
) -> None:
    response = await me(oidc_client, idp_token(idp_key, idp_claims("Approver@Test.Bank")))
    assert response.status_code == 200, response.text
    who = response.json()
    assert (who["user_id"], who["email"], who["role"]) == (
        cast.ids["approver"],
        "approver@test.bank",
        "approver",
    )
    assert (who["api_key_id"], who["scopes"]) == (None, None)


async def test_own_tokens_still_work_when_oidc_is_configured(
    oidc_client: httpx.AsyncClient, cast: Cast
) -> None:
    assert (await oidc_client.get(ME, headers=cast["trader"])).status_code == 200


async def test_oidc_token_for_an_unknown_email_is_refused(
    oidc_client: httpx.AsyncClient, cast: Cast, idp_key: rsa.RSAPrivateKey
) -> None:
    token = idp_token(idp_key, idp_claims("stranger@elsewhere.example"))
    assert_unauthenticated(await me(oidc_client, token))


async def test_oidc_token_of_a_deactivated_user_is_refused(
    oidc_client: httpx.AsyncClient, cast: Cast, idp_key: rsa.RSAPrivateKey
) -> None:
    done = await oidc_client.post(
        f"{API}/users/{cast.ids['approver']}/deactivate", headers=cast["admin"]
    )
    assert done.status_code == 200
    assert_unauthenticated(
        await me(oidc_client, idp_token(idp_key, idp_claims("approver@test.bank")))
    )


async def test_hs256_token_signed_with_the_idp_public_key_is_refused(
    oidc_client: httpx.AsyncClient, cast: Cast, idp_key: rsa.RSAPrivateKey
) -> None:
    """Algorithm confusion: the public key is public, so it must never verify an HMAC."""
    payload = idp_claims("admin@test.bank")
    for header in ({"alg": "HS256", "typ": "JWT", "kid": KID}, {"alg": "HS256", "typ": "JWT"}):
        token = hs256_by_hand(payload, public_pem(idp_key), header)
        assert_unauthenticated(await me(oidc_client, token))


async def test_hs256_token_claiming_the_idp_issuer_is_refused_even_with_our_secret(
    oidc_client: httpx.AsyncClient, cast: Cast, settings: Settings
) -> None:
    token = sign_own(settings, idp_claims("admin@test.bank"))
    assert_unauthenticated(await me(oidc_client, token))


async def test_alg_none_token_claiming_the_idp_issuer_is_refused(
    oidc_client: httpx.AsyncClient, cast: Cast
) -> None:
    assert_unauthenticated(await me(oidc_client, unsigned(idp_claims("admin@test.bank"))))


async def test_oidc_token_signed_by_another_rsa_key_is_refused(
    oidc_client: httpx.AsyncClient, cast: Cast
) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for kid in (KID, "attacker-key"):
        token = idp_token(attacker, idp_claims("admin@test.bank"), kid=kid)
        assert_unauthenticated(await me(oidc_client, token))


@pytest.mark.parametrize(
    "changes",
    [
        {"aud": "tradeops-api"},
        {"exp": int(time.time()) - 3600},
        {"email": MISSING},
        {"email": "not-an-email"},
        {"sub": MISSING},
    ],
    ids=["our-audience", "expired", "no-email", "bad-email", "no-sub"],
)
async def test_oidc_token_with_a_bad_claim_is_refused(
    oidc_client: httpx.AsyncClient, cast: Cast, idp_key: rsa.RSAPrivateKey, changes: Any
) -> None:
    token = idp_token(idp_key, idp_claims("approver@test.bank", **changes))
    slug = "token-expired" if "exp" in changes else "unauthenticated"
    assert_unauthenticated(await me(oidc_client, token), slug)


async def test_rs256_token_claiming_our_issuer_is_refused(
    oidc_client: httpx.AsyncClient, cast: Cast, settings: Settings, idp_key: rsa.RSAPrivateKey
) -> None:
    """Our own issuer is HS256 only, even when an RSA key of the provider signs it."""
    token = idp_token(idp_key, own_claims(settings, cast.ids["admin"]))
    assert_unauthenticated(await me(oidc_client, token))


# --- signing in ------------------------------------------------------------------------------


async def failed_logins(engine: AsyncEngine, email: str) -> int:
    async with engine.connect() as conn:
        query = text("SELECT failures FROM sign_in_throttle WHERE email_key = :key")
        return int(await conn.scalar(query, {"key": email_key(email)}) or 0)


async def test_wrong_password_is_401(client: httpx.AsyncClient, cast: Cast) -> None:
    assert_unauthenticated(await sign_in(client, "trader@test.bank", "not-the-password"))


async def test_unknown_email_is_401_like_a_wrong_password(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    unknown = await sign_in(client, "nobody@test.bank", PASSWORD)
    wrong = await sign_in(client, "trader@test.bank", "not-the-password")
    assert_unauthenticated(unknown)
    assert unknown.json()["detail"] == wrong.json()["detail"]


async def test_failed_sign_in_is_counted_and_success_resets_the_count(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    for attempt in (1, 2):
        assert (await sign_in(client, "trader@test.bank", "wrong-password")).status_code == 401
        assert await failed_logins(owner_engine, "trader@test.bank") == attempt
    assert (await sign_in(client, "trader@test.bank", PASSWORD)).status_code == 200
    assert await failed_logins(owner_engine, "trader@test.bank") == 0


async def test_account_locks_after_max_failures_even_for_the_right_password(
    client: httpx.AsyncClient, cast: Cast, settings: Settings, owner_engine: AsyncEngine
) -> None:
    for _ in range(settings.login_max_failures):
        assert_unauthenticated(await sign_in(client, "trader@test.bank", "wrong-password"))
    locked = await sign_in(client, "trader@test.bank", PASSWORD)
    assert locked.status_code == 429, locked.text
    assert locked.headers["content-type"] == PROBLEM
    assert 0 < int(locked.headers["retry-after"]) <= settings.login_lockout_seconds
    assert "access_token" not in locked.text
    assert await failed_logins(owner_engine, "trader@test.bank") == settings.login_max_failures
    other = await sign_in(client, "trader2@test.bank", PASSWORD)
    assert other.status_code == 200, "the lock is per account"


async def test_password_hash_never_appears_in_responses(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    async with owner_engine.connect() as conn:
        stored = await conn.scalar(
            text("SELECT password_hash FROM users WHERE id = :id"), {"id": cast.ids["trader"]}
        )
    token = (await sign_in(client, "trader@test.bank", PASSWORD)).json()["access_token"]
    responses = [
        await client.get(f"{API}/users", headers=cast["admin"]),
        await client.get(ME, headers=bearer(token)),
        await client.put(
            f"{API}/users/{cast.ids['trader']}/desks",
            json={"desks": ["EQ-US"]},
            headers=cast["admin"],
        ),
    ]
    for response in responses:
        assert response.status_code == 200, response.text
        assert stored not in response.text
        assert "argon2" not in response.text
        assert "password" not in response.text
