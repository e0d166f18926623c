"""JWT access tokens (RFC 8725 practice): one algorithm per issuer, every claim required.

Our own tokens are HS256 with TRADEOPS_SECRET_KEY. Tokens from an external identity provider
(TRADEOPS_OIDC_ISSUER) are checked against its JWKS with asymmetric algorithms only, so a
token "signed" with the provider's public key as an HMAC secret is refused.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jwt
from jwt import PyJWKClient, PyJWKSet

from tradeops.numeric_input import parse_count
from tradeops.settings import Settings

OWN_ALGORITHM = "HS256"
EXTERNAL_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
LEEWAY_SECONDS = 30  # clock skew allowed on exp and nbf
# Our own tokens verified lately, kept so that a caller's next request with the same token
# skips the JWT decoding (70-110 µs a token; docs/security.md). The oldest go first.
OWN_TOKENS_KEPT = 4096


class InvalidToken(Exception):
    pass


class TokenExpired(InvalidToken):
    """A token that was good and ran out: its holder only needs to sign in again."""


@dataclass(frozen=True)
class TokenSubject:
    """Who a valid token speaks for: our user id, or an external identity's email."""

    user_id: int | None = None
    email: str | None = None


class TokenService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # token -> (who it speaks for, the time.time() it stops being good). A token's claims
        # and signature are its text, so the same text verifies the same way until it expires;
        # a tampered one is another key. Only our own: an external token's signing key may
        # leave the provider's key set (refetched every 5 minutes), so it is checked each time.
        self._own_verified: dict[str, tuple[TokenSubject, float]] = {}

    def issue(self, user_id: int, role: str) -> tuple[str, int]:
        now = int(time.time())
        ttl = self.settings.token_ttl_minutes * 60
        claims = {
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "sub": str(user_id),
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "role": role,
        }
        token = jwt.encode(claims, self.settings.secret_key.get_secret_value(), OWN_ALGORITHM)
        return token, ttl

    def verify(self, token: str) -> TokenSubject:
        known = self._own_verified.get(token)
        if known is not None:
            subject, good_until = known
            if time.time() < good_until:
                return subject
            del self._own_verified[token]  # expired: decoding it again says so
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as error:
            raise InvalidToken("malformed token") from error
        oidc_issuer = self.settings.oidc_issuer
        if oidc_issuer and unverified.get("iss") == oidc_issuer:
            return self._verify_external(token)
        return self._verify_own(token)

    def _verify_own(self, token: str) -> TokenSubject:
        claims = self._decode(
            token,
            self.settings.secret_key.get_secret_value(),
            [OWN_ALGORITHM],
            self.settings.jwt_issuer,
            self.settings.jwt_audience,
        )
        user_id = parse_count(str(claims["sub"]), max_digits=18)
        if user_id is None:
            raise InvalidToken("bad subject")
        subject = TokenSubject(user_id=user_id)
        self._keep_own(token, subject, float(claims["exp"]) + LEEWAY_SECONDS)
        return subject

    def _keep_own(self, token: str, subject: TokenSubject, good_until: float) -> None:
        while len(self._own_verified) >= OWN_TOKENS_KEPT:
            del self._own_verified[next(iter(self._own_verified))]
        self._own_verified[token] = (subject, good_until)

    def _verify_external(self, token: str) -> TokenSubject:
        try:
            key = self._external_key(token)
        except (jwt.PyJWTError, KeyError, ValueError) as error:
            raise InvalidToken("no matching signing key") from error
        claims = self._decode(
            token,
            key,
            EXTERNAL_ALGORITHMS,
            self.settings.oidc_issuer or "",
            self.settings.oidc_audience or self.settings.jwt_audience,
        )
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise InvalidToken("external token without an email claim")
        return TokenSubject(email=email.lower())

    @staticmethod
    def _decode(
        token: str, key: Any, algorithms: list[str], issuer: str, audience: str
    ) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=algorithms,
                issuer=issuer,
                audience=audience,
                options={"require": REQUIRED_CLAIMS},
                leeway=LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError as error:
            raise TokenExpired(str(error)) from error
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from error

    def _external_key(self, token: str) -> Any:
        kid = jwt.get_unverified_header(token).get("kid")
        if self.settings.oidc_jwks_file is not None:
            key_set = self._file_key_set
            keys = [k for k in key_set.keys if kid is None or k.key_id == kid]
            if not keys:
                raise KeyError(kid)
            return keys[0].key
        if self.settings.oidc_jwks_url:
            return self._jwks_client.get_signing_key_from_jwt(token).key
        raise KeyError("no JWKS configured")

    @cached_property
    def _file_key_set(self) -> PyJWKSet:
        assert self.settings.oidc_jwks_file is not None
        return PyJWKSet.from_dict(json.loads(self.settings.oidc_jwks_file.read_text()))

    @cached_property
    def _jwks_client(self) -> PyJWKClient:
        assert self.settings.oidc_jwks_url
        return PyJWKClient(self.settings.oidc_jwks_url, cache_keys=True, lifespan=300)


__all__ = ["InvalidToken", "TokenExpired", "TokenService", "TokenSubject"]
