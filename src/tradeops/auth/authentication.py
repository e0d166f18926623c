"""Turning credentials into a principal, in the same round trip that sets the context.

The authenticating statements (SQL functions, migration 0019; auth/repository.py's
AUTHENTICATE, and inside the one-statement reads) find the user (by token subject, external
email or API key), check that the user is active (and the key unrevoked and
unexpired), compute the desks the principal may see, and — for the row they return — switch
the transaction to the unprivileged role and publish the context. No row: no context, and the
request fails 401. They run as the login role, before the switch: the only place that reads
password or key hashes, which the application role cannot select. A request in a transaction
runs one of them as its first statement (`authenticate`); a one-statement read runs it
inside its own statement (`credential_parameters`, `principal_found`).
"""

from __future__ import annotations

from typing import Any

from tradeops.auth.key_usage import KeyUsage
from tradeops.auth.keys import hash_key, parse_key
from tradeops.auth.principal import Principal, Role
from tradeops.auth.repository import AUTHENTICATE, Authenticated
from tradeops.auth.tokens import InvalidToken, TokenExpired, TokenService
from tradeops.db.uow import APP_ROLE, UnitOfWork
from tradeops.errors import Unauthenticated


def _principal(row: Authenticated) -> Principal:
    return Principal(
        user_id=row.user_id,
        email=row.email,
        role=Role(row.role),
        desk_ids=frozenset(row.desk_ids),
        all_desks=row.all_desks,
        api_key_id=row.key_id,
        scopes=None if row.scopes is None else frozenset(row.scopes),
    )


def credential_parameters(
    credential: str, tokens: TokenService, request_id: str | None
) -> dict[str, Any]:
    """What the authenticating statement needs for a bearer credential (an API key's prefix
    and hash, or a verified token's subject), with the application role and request id;
    401 for a token that does not verify. Every key is present, NULL where unused, for the
    one-statement reads that take either."""
    params: dict[str, Any] = {"app_role": APP_ROLE, "request_id": request_id or ""}
    prefix = parse_key(credential)
    if prefix is not None:
        return params | {
            "prefix": prefix,
            "hash": hash_key(credential),
            "user_id": None,
            "email": None,
        }
    try:
        subject = tokens.verify(credential)
    except TokenExpired as error:
        raise AccessTokenExpired(
            "The access token expired; sign in again for a new one.",
            headers={
                "WWW-Authenticate": 'Bearer realm="tradeops", error="invalid_token", '
                'error_description="The access token expired"'
            },
        ) from error
    except InvalidToken as error:
        raise unauthenticated("The access token is not valid.") from error
    return params | {
        "prefix": None,
        "hash": None,
        "user_id": subject.user_id,
        "email": subject.email,
    }


def principal_found(row: Authenticated | None, key_usage: KeyUsage) -> Principal:
    """The principal the authenticating statement found (401 if none); a key's use is
    noted in `key_usage`."""
    if row is None:
        raise unauthenticated("The credentials are not valid, expired, revoked or inactive.")
    principal = _principal(row)
    if row.touch and principal.api_key_id is not None:
        key_usage.note(principal.api_key_id)
    return principal


async def authenticate(
    uow: UnitOfWork,
    credential: str,
    tokens: TokenService,
    request_id: str | None,
    key_usage: KeyUsage,
) -> Principal:
    """The principal a bearer credential (JWT or API key) stands for; 401 if none. Reads
    only (it may run on a read replica); a key's use is noted in `key_usage`."""
    params = credential_parameters(credential, tokens, request_id)
    found = await uow.row(AUTHENTICATE, params)
    principal = principal_found(found, key_usage)
    uow.principal, uow.request_id = principal, request_id
    return principal


async def authenticate_user(
    uow: UnitOfWork, user_id: int, page_session_generation: int, request_id: str | None
) -> Principal | None:
    """The principal of an active person by id, for a page session begun in
    `page_session_generation`; None when the user is gone or deactivated, or has signed out
    since. Desks and role are read now, so changes apply at once."""
    params = {"prefix": None, "hash": None, "user_id": user_id, "email": None}
    row = await uow.row(
        AUTHENTICATE, {**params, "app_role": APP_ROLE, "request_id": request_id or ""}
    )
    if row is None or row.page_session_generation != page_session_generation:
        # The context this statement set dies with the transaction: the request fails.
        return None
    principal = _principal(row)
    uow.principal, uow.request_id = principal, request_id
    return principal


class AccessTokenExpired(Unauthenticated):
    """Told apart from a bad token, so a client knows a new sign-in is all it needs."""

    slug = "token-expired"
    title = "Access token expired"


def unauthenticated(detail: str) -> Unauthenticated:
    return Unauthenticated(detail, headers={"WWW-Authenticate": 'Bearer realm="tradeops"'})
