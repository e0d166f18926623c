"""The pages' session: a signed cookie that carries who is signed in and the CSRF token.

The cookie is a JWT signed with a key derived from TRADEOPS_SECRET_KEY for this use only and
addressed to its own audience, so a session cookie is never an API bearer token nor the
reverse. It holds the user id, role, page session generation, expiry and the session's CSRF
token; each request still reads the user from the database (active, role, desks,
generation), so deactivating a user, changing their role or their signing out (which moves
the generation on) ends their sessions at once, copies of the cookie included. Before
sign-in the cookie holds a CSRF token only, which protects the sign-in form itself; signing
in replaces it with a new one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import jwt
from fastapi import Response

from tradeops.numeric_input import parse_count
from tradeops.settings import Settings

COOKIE = "tradeops_session"
COOKIE_PATH = "/ui"
AUDIENCE = "tradeops-ui"
ALGORITHM = "HS256"
# Environments served over plain http on a developer's machine; everywhere else, https only.
PLAIN_HTTP_ENVS = frozenset({"dev", "test"})


@dataclass(frozen=True, slots=True)
class PageSession:
    csrf: str
    expires_at: int
    user_id: int | None = None
    role: str | None = None
    generation: int | None = None

    @property
    def signed_in(self) -> bool:
        return self.user_id is not None


class Sessions:
    def __init__(self, settings: Settings) -> None:
        secret = settings.secret_key.get_secret_value().encode()
        self._key = hmac.new(secret, b"tradeops ui session", hashlib.sha256).digest()
        self._ttl = settings.ui_session_minutes * 60
        self._secure = settings.env not in PLAIN_HTTP_ENVS

    def start(
        self, user_id: int | None = None, role: str | None = None, generation: int | None = None
    ) -> PageSession:
        """A new session with a new CSRF token (also at sign-in: no token outlives it)."""
        return PageSession(
            csrf=secrets.token_urlsafe(32),
            expires_at=int(time.time()) + self._ttl,
            user_id=user_id,
            role=role,
            generation=generation,
        )

    def read(self, cookie: str | None) -> PageSession | None:
        """The session a cookie holds; None if missing, forged, expired or malformed."""
        if not cookie:
            return None
        try:
            claims = jwt.decode(
                cookie,
                self._key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                options={"require": ["exp", "aud", "csrf"]},
            )
        except jwt.PyJWTError:
            return None
        subject, role, csrf = claims.get("sub"), claims.get("role"), claims["csrf"]
        generation = claims.get("gen")
        if not isinstance(csrf, str):
            return None
        user_id = None if subject is None else parse_count(str(subject), max_digits=18)
        if subject is not None and not (user_id is not None and type(generation) is int):
            return None  # a signed-in session names its user and generation
        return PageSession(
            csrf=csrf,
            expires_at=int(claims["exp"]),
            user_id=user_id,
            role=role if isinstance(role, str) else None,
            generation=generation if subject is not None else None,
        )

    def save(self, response: Response, session: PageSession) -> None:
        claims: dict[str, object] = {
            "aud": AUDIENCE,
            "exp": session.expires_at,
            "csrf": session.csrf,
        }
        if session.user_id is not None:
            claims |= {
                "sub": str(session.user_id),
                "role": session.role,
                "gen": session.generation,
            }
        response.set_cookie(
            COOKIE,
            jwt.encode(claims, self._key, ALGORITHM),
            max_age=max(0, session.expires_at - int(time.time())),
            path=COOKIE_PATH,
            secure=self._secure,
            httponly=True,
            samesite="lax",
        )

    def end(self, response: Response) -> None:
        response.delete_cookie(
            COOKIE, path=COOKIE_PATH, secure=self._secure, httponly=True, samesite="lax"
        )


def csrf_matches(session: PageSession | None, submitted: object) -> bool:
    """The form's token is the session's own (compared in constant time)."""
    if session is None or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(session.csrf.encode(), submitted.encode())
