"""Turning credentials into a principal, in the same round trip that sets the context.

Each statement below finds the user (by token subject, external email or API key), checks
that the user is active (and the key unrevoked and unexpired), computes the desks the
principal may see, and — for the row it returns — switches the transaction to the
unprivileged role and publishes the context. No row: no context, and the request fails 401.
These statements run as the login role, before the switch: the only place that reads
password or key hashes, which the application role cannot select.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tradeops.auth.key_usage import KeyUsage
from tradeops.auth.keys import hash_key, parse_key
from tradeops.auth.principal import Principal, Role, sees_every_desk
from tradeops.auth.tokens import InvalidToken, TokenExpired, TokenService
from tradeops.db.prepared import query
from tradeops.db.uow import APP_ROLE, UnitOfWork, context_column
from tradeops.errors import Unauthenticated

EVERY_DESK = sees_every_desk("u.role")
# The context, set for the row found: who it is, computed by the statement itself.
_SET_CONTEXT = context_column(
    {
        "role": ":app_role",
        "user_id": "u.id::text",
        "principal_role": "u.role",
        "desk_ids": "ctx.desk_ids::text",
        "all_desks": "ctx.all_desks::text",
        "api_key_id": "COALESCE(ctx.key_id::text, '')",
        "request_id": ":request_id",
    }
)


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Who the credentials stand for, as the statement that checked them found it."""

    user_id: int
    email: str
    role: str
    desk_ids: list[int]
    all_desks: bool
    key_id: int | None
    scopes: list[str] | None
    touch: bool  # an API key last noted as used over a minute ago
    page_session_generation: int
    context: str  # the context settings, set (see db/uow.py)


_PERSON = query(
    f"""
SELECT u.id AS user_id, u.email, u.role, ctx.desk_ids, ctx.all_desks, NULL::bigint AS key_id,
       NULL::text[] AS scopes, false AS touch, u.page_session_generation,
       {_SET_CONTEXT}
FROM users u
CROSS JOIN LATERAL (
    SELECT COALESCE(array_agg(m.desk_id ORDER BY m.desk_id), '{{}}') AS desk_ids,
           {EVERY_DESK} AS all_desks, NULL::bigint AS key_id
    FROM desk_members m WHERE m.user_id = u.id
) ctx
WHERE u.active AND u.role <> 'system' AND (u.id = :user_id OR u.email = :email)
""",
    Authenticated,
)

# Risk and admin keys see every desk unless the key names some; others see the owner's
# desks, narrowed to the key's. `touch`: last_used_at is over a minute old, so the key is
# noted in KeyUsage, which writes it later on the primary: authenticating never writes.
AUTHENTICATE_API_KEY = query(
    f"""
SELECT u.id AS user_id, u.email, u.role, ctx.desk_ids, ctx.all_desks, k.id AS key_id,
       k.scopes, k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds'
       AS touch, u.page_session_generation, {_SET_CONTEXT}
FROM api_keys k
JOIN users u ON u.id = k.owner_user_id
CROSS JOIN LATERAL (
    SELECT CASE WHEN {EVERY_DESK} THEN COALESCE(k.desk_ids, '{{}}')
                ELSE COALESCE((SELECT array_agg(m.desk_id ORDER BY m.desk_id) FROM desk_members m
                               WHERE m.user_id = u.id
                                 AND (k.desk_ids IS NULL OR m.desk_id = ANY(k.desk_ids))), '{{}}')
           END AS desk_ids,
           {EVERY_DESK} AND k.desk_ids IS NULL AS all_desks,
           k.id AS key_id
) ctx
WHERE k.prefix = :prefix AND k.hash = :hash AND k.revoked_at IS NULL
  AND (k.expires_at IS NULL OR k.expires_at > now()) AND u.active AND u.role <> 'system'
""",
    Authenticated,
)


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


async def authenticate(
    uow: UnitOfWork,
    credential: str,
    tokens: TokenService,
    request_id: str | None,
    key_usage: KeyUsage,
) -> Principal:
    """The principal a bearer credential (JWT or API key) stands for; 401 if none. Reads
    only (it may run on a read replica); a key's use is noted in `key_usage`."""
    prefix = parse_key(credential)
    if prefix is not None:
        params: dict[str, Any] = {"prefix": prefix, "hash": hash_key(credential)}
        statement = AUTHENTICATE_API_KEY
    else:
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
        params = {"user_id": subject.user_id, "email": subject.email}
        statement = _PERSON
    params |= {"app_role": APP_ROLE, "request_id": request_id or ""}
    row = await uow.row(statement, params)
    if row is None:
        raise unauthenticated("The credentials are not valid, expired, revoked or inactive.")
    principal = _principal(row)
    uow.principal, uow.request_id = principal, request_id
    if row.touch and principal.api_key_id is not None:
        key_usage.note(principal.api_key_id)
    return principal


async def authenticate_user(
    uow: UnitOfWork, user_id: int, page_session_generation: int, request_id: str | None
) -> Principal | None:
    """The principal of an active person by id, for a page session begun in
    `page_session_generation`; None when the user is gone or deactivated, or has signed out
    since. Desks and role are read now, so changes apply at once."""
    params = {"user_id": user_id, "email": None, "app_role": APP_ROLE}
    row = await uow.row(_PERSON, {**params, "request_id": request_id or ""})
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
