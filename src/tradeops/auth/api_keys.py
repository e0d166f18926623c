"""API keys for agents and services: created, listed, revoked; the secret is shown once."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tradeops.audit import recording as audit
from tradeops.auth import repository as repo
from tradeops.auth.keys import generate_key
from tradeops.auth.permissions import (
    KNOWN_SCOPES,
    Action,
    authorize,
    is_allowed,
    usable_scopes,
)
from tradeops.auth.principal import Principal, Role
from tradeops.auth.schemas import ApiKeyOut
from tradeops.db.prepared import Id
from tradeops.db.uow import UnitOfWork
from tradeops.desks.service import desk_ids_by_code
from tradeops.errors import Forbidden, InvalidRequest, NotFound

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


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret key. Shown only now: store it safely.")


class ApiKeyNotFound(NotFound):
    slug = "api-key-not-found"
    title = "API key not found"


def _every_owner(principal: Principal) -> bool:
    """Whether the principal sees every owner's keys, or only their own."""
    return is_allowed(principal, Action.MANAGE_ANY_API_KEYS)


async def _key(uow: UnitOfWork, key_id: int) -> ApiKeyOut:
    """A key this transaction just wrote, as the API shows it."""
    row = await uow.row_of(repo.key_by_id(key_id), ApiKeyOut)
    assert row is not None
    return row


async def _owner(
    uow: UnitOfWork, principal: Principal, owner_email: str | None
) -> tuple[int, Role]:
    """The key owner's user id and role."""
    if owner_email is None or owner_email.lower() == principal.email:
        return principal.user_id, principal.role
    authorize(principal, Action.MANAGE_ANY_API_KEYS)
    owner = await uow.row_of(repo.person_by_email(owner_email), repo.UserRole)
    if owner is None:
        raise InvalidRequest(f"Unknown user {owner_email}.", field="owner_email")
    return owner.id, Role(owner.role)


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


async def _key_desks(uow: UnitOfWork, owner_id: int, codes: list[str]) -> list[int]:
    """A key narrows its owner's desks; naming a desk the owner does not cover is an error."""
    wanted = await desk_ids_by_code(uow, codes)
    owner = await uow.row(repo.OWNER_DESKS, {"id": owner_id})
    assert owner is not None  # the owner was found above
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
    inserted = await uow.row_of(
        repo.insert_key(
            {
                "owner_user_id": owner_id,
                "name": data.name,
                "prefix": prefix,
                "hash": key_hash,
                "scopes": sorted(set(data.scopes)),
                "desk_ids": desk_ids,
            },
            expires_in_days=data.expires_in_days,
        ),
        Id,
    )
    assert inserted is not None  # an INSERT without ON CONFLICT returns its row
    key_id = inserted.id
    created = await _key(uow, key_id)
    await audit.record(uow, principal, "api_key.created", "api_key", key_id, after=created)
    return ApiKeyCreated(**created.model_dump(), key=key)


async def list_api_keys(uow: UnitOfWork, principal: Principal) -> list[ApiKeyOut]:
    authorize(principal, Action.MANAGE_OWN_API_KEYS)
    every_owner = _every_owner(principal)
    return await uow.rows_of(repo.keys_visible_to(principal, every_owner=every_owner), ApiKeyOut)


async def revoke_api_key(uow: UnitOfWork, principal: Principal, key_id: int) -> ApiKeyOut:
    """Revocation is immediate: the next request with the key gets 401."""
    authorize(principal, Action.MANAGE_OWN_API_KEYS)
    every_owner = _every_owner(principal)
    before = await uow.row_of(
        repo.key_visible_to(principal, key_id, every_owner=every_owner), ApiKeyOut
    )
    if before is None:
        raise ApiKeyNotFound(f"No API key {key_id}.")
    await uow.execute(repo.revoke_key(key_id))
    after = await _key(uow, key_id)
    await audit.record(
        uow, principal, "api_key.revoked", "api_key", key_id, before=before, after=after
    )
    return after
