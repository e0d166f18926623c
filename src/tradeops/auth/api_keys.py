"""API keys for agents and services: created, listed, revoked; the secret is shown once."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import aggregate_order_by, insert

from tradeops.audit import service as audit
from tradeops.auth.keys import generate_key
from tradeops.auth.models import ApiKey, User
from tradeops.auth.permissions import (
    KNOWN_SCOPES,
    Action,
    authorize,
    is_allowed,
    usable_scopes,
)
from tradeops.auth.principal import Principal, Role, sees_every_desk
from tradeops.db.base import table_of
from tradeops.db.uow import UnitOfWork
from tradeops.desks.models import Desk
from tradeops.desks.service import desk_ids_by_code
from tradeops.errors import Forbidden, InvalidRequest, NotFound

api_keys = table_of(ApiKey)
users = table_of(User)
desks = table_of(Desk)

Scope = Annotated[str, StringConstraints(pattern=r"^[a-z]+:[a-z]+$")]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, examples=["research-agent"])
    scopes: list[Scope] = Field(
        min_length=1,
        examples=[["orders:read", "orders:write"]],
        description=f"Any of: {', '.join(sorted(KNOWN_SCOPES))}",
    )
    desks: list[str] | None = Field(
        default=None, description="Narrow the key to these desk codes (default: the owner's)"
    )
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)
    owner_email: str | None = Field(
        default=None, description="Admin only: create the key for another user (e.g. an agent)"
    )


class ApiKeyOut(BaseModel):
    id: int
    name: str
    prefix: str
    owner_email: str
    scopes: list[str]
    desks: list[str] | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret key. Shown only now: store it safely.")


class ApiKeyNotFound(NotFound):
    slug = "api-key-not-found"
    title = "API key not found"


def _key_view() -> Any:
    desk_codes = (
        select(func.array_agg(aggregate_order_by(desks.c.code, desks.c.code)))
        .where(desks.c.id == func.any(api_keys.c.desk_ids))
        .scalar_subquery()
    )
    return select(
        api_keys.c.id,
        api_keys.c.name,
        api_keys.c.prefix,
        users.c.email.label("owner_email"),
        api_keys.c.scopes,
        desk_codes.label("desks"),
        api_keys.c.created_at,
        api_keys.c.expires_at,
        api_keys.c.revoked_at,
        api_keys.c.last_used_at,
    ).join(users, users.c.id == api_keys.c.owner_user_id)


def _visible_to(principal: Principal) -> Any:
    statement = _key_view()
    if not is_allowed(principal, Action.MANAGE_ANY_API_KEYS):
        statement = statement.where(api_keys.c.owner_user_id == principal.user_id)
    return statement


async def _owner(
    uow: UnitOfWork, principal: Principal, owner_email: str | None
) -> tuple[int, Role]:
    """The key owner's user id and role."""
    if owner_email is None or owner_email.lower() == principal.email:
        return principal.user_id, principal.role
    authorize(principal, Action.MANAGE_ANY_API_KEYS)
    owner = await uow.one_or_none(
        select(users.c.id, users.c.role).where(
            users.c.email == owner_email.lower(), users.c.role != "system"
        )
    )
    if owner is None:
        raise InvalidRequest(f"Unknown user {owner_email}.", field="owner_email")
    return int(owner.id), Role(owner.role)


def _check_usable(scopes: list[str], role: Role) -> None:
    """A scope the owner's role can never use would be a key that is refused whatever it
    does with it: say so now, with the scopes that would work."""
    usable = usable_scopes(role)
    unusable = sorted(set(scopes) - usable)
    if unusable:
        raise InvalidRequest(
            f"The key's owner has the role {role.value}, which can never use "
            f"{', '.join(unusable)} (a key only narrows what its owner may do). Scopes its "
            f"key can use: {', '.join(sorted(usable))}.",
            field="scopes",
            usable_scopes=sorted(usable),
        )


_OWNER_DESKS = text(
    f"SELECT {sees_every_desk('u.role')} AS all_desks,"  # noqa: S608 - constants only
    " ARRAY(SELECT desk_id FROM desk_members WHERE user_id = u.id) AS desk_ids"
    " FROM users u WHERE u.id = :id"
)


async def _key_desks(uow: UnitOfWork, owner_id: int, codes: list[str]) -> list[int]:
    """A key narrows its owner's desks; naming a desk the owner does not cover is an error."""
    wanted = await desk_ids_by_code(uow, codes)
    owner = (await uow.execute(_OWNER_DESKS, {"id": owner_id})).one()
    outside = sorted(code for code, desk in wanted.items() if desk not in owner.desk_ids)
    if outside and not owner.all_desks:
        raise InvalidRequest(
            f"The key's owner does not cover desk {', '.join(outside)}.", field="desks"
        )
    return list(wanted.values())


async def create_api_key(
    uow: UnitOfWork, principal: Principal, data: ApiKeyCreate
) -> ApiKeyCreated:
    """Keys are for agents and services; a key can never be used to create another key."""
    if principal.api_key_id is not None:
        raise Forbidden("An API key cannot create API keys; sign in as a person.")
    authorize(principal, Action.MANAGE_OWN_API_KEYS)
    unknown = sorted(set(data.scopes) - KNOWN_SCOPES)
    if unknown:
        raise InvalidRequest(f"Unknown scope: {', '.join(unknown)}.", field="scopes")
    owner_id, owner_role = await _owner(uow, principal, data.owner_email)
    _check_usable(data.scopes, owner_role)
    desk_ids = await _key_desks(uow, owner_id, data.desks) if data.desks else None
    key, prefix, key_hash = generate_key()
    expires = (
        func.now() + func.make_interval(0, 0, 0, data.expires_in_days)
        if data.expires_in_days
        else None
    )
    key_id = await uow.scalar(
        insert(api_keys)
        .values(
            owner_user_id=owner_id,
            name=data.name,
            prefix=prefix,
            hash=key_hash,
            scopes=sorted(set(data.scopes)),
            desk_ids=desk_ids,
            expires_at=expires,
        )
        .returning(api_keys.c.id)
    )
    row = (await uow.execute(_key_view().where(api_keys.c.id == key_id))).one()
    created = ApiKeyOut.model_validate(row._mapping)
    await audit.record(uow, principal, "api_key.created", "api_key", key_id, after=created)
    return ApiKeyCreated(**created.model_dump(), key=key)


async def list_api_keys(uow: UnitOfWork, principal: Principal) -> list[ApiKeyOut]:
    authorize(principal, Action.MANAGE_OWN_API_KEYS)
    rows = await uow.execute(_visible_to(principal).order_by(api_keys.c.id))
    return [ApiKeyOut.model_validate(r._mapping) for r in rows]


async def revoke_api_key(uow: UnitOfWork, principal: Principal, key_id: int) -> ApiKeyOut:
    """Revocation is immediate: the next request with the key gets 401."""
    authorize(principal, Action.MANAGE_OWN_API_KEYS)
    row = await uow.one_or_none(_visible_to(principal).where(api_keys.c.id == key_id))
    if row is None:
        raise ApiKeyNotFound(f"No API key {key_id}.")
    await uow.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    revoked = (await uow.execute(_key_view().where(api_keys.c.id == key_id))).one()
    after = ApiKeyOut.model_validate(revoked._mapping)
    before = ApiKeyOut.model_validate(row._mapping)
    await audit.record(
        uow, principal, "api_key.revoked", "api_key", key_id, before=before, after=after
    )
    return after
