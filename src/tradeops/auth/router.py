from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, ConfigDict

from tradeops.auth import api_keys, users
from tradeops.auth.api_keys import ApiKeyCreate, ApiKeyCreated
from tradeops.auth.authentication import unauthenticated
from tradeops.auth.passwords import PasswordChecksBusy
from tradeops.auth.principal import Principal
from tradeops.auth.schemas import ApiKeyOut, UserOut
from tradeops.auth.sign_in import LoginThrottled, ThrottlePolicy, sign_in
from tradeops.auth.users import UserCreate
from tradeops.db.http import TransactionalRoute
from tradeops.deps import API_PREFIX, CurrentPrincipal, RowId, UoW
from tradeops.errors import Forbidden, InvalidRequest, Unauthenticated
from tradeops.problems import problem_responses

router = APIRouter(prefix=API_PREFIX, route_class=TransactionalRoute)


class AccessToken(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class Me(BaseModel):
    user_id: int
    email: str
    role: str
    desk_ids: list[int]
    all_desks: bool
    api_key_id: int | None
    scopes: list[str] | None

    @classmethod
    def of(cls, principal: Principal) -> Me:
        return cls(
            user_id=principal.user_id,
            email=principal.email,
            role=principal.role.value,
            desk_ids=sorted(principal.desk_ids),
            all_desks=principal.all_desks,
            api_key_id=principal.api_key_id,
            scopes=None if principal.scopes is None else sorted(principal.scopes),
        )


class DeskAssignment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    desks: list[str]


# Not a TransactionalRoute: signing in runs its own short transactions around the password
# check (auth/sign_in.py), so no transaction or connection is held while a hash is checked.
sign_in_router = APIRouter(prefix=API_PREFIX)


@sign_in_router.post(
    "/auth/token",
    response_model=AccessToken,
    tags=["auth"],
    responses=problem_responses(Unauthenticated, LoginThrottled, PasswordChecksBusy),
)
async def issue_token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request
) -> AccessToken:
    """Sign in with email (as `username`) and password (OAuth2 password form). Returns a
    short-lived bearer token. Repeated failures lock the email, whether or not it has an
    account, for a growing time (429 with Retry-After); 503 with Retry-After when too many
    sign-ins are being checked at once."""
    state = request.app.state
    signed_in = await sign_in(
        state.db,
        state.password_checks,
        form.username,
        form.password,
        ThrottlePolicy.of(state.settings),
        request.state.request_id,
    )
    if signed_in is None:  # the failure is already counted and committed
        raise unauthenticated("Wrong email or password.")
    token, ttl = state.tokens.issue(signed_in.user_id, signed_in.role)
    return AccessToken(access_token=token, expires_in=ttl)


@router.get(
    "/auth/me", response_model=Me, tags=["auth"], responses=problem_responses(Unauthenticated)
)
async def who_am_i(principal: CurrentPrincipal) -> Me:
    """Who the credentials stand for: role, desks, and for an API key its id and scopes."""
    return Me.of(principal)


@router.get(
    "/users", response_model=list[UserOut], tags=["users"], responses=problem_responses(Forbidden)
)
async def list_users(principal: CurrentPrincipal, uow: UoW) -> list[UserOut]:
    """All users with their roles and desks (admin)."""
    return await users.list_users(uow, principal)


@router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    tags=["users"],
    responses=problem_responses(InvalidRequest, Forbidden, users.UserExists),
)
async def create_user(data: UserCreate, principal: CurrentPrincipal, uow: UoW) -> UserOut:
    """Create a person or agent account with a role and desks (admin). The password is
    hashed with argon2id and never returned."""
    return await users.create_user(uow, principal, data)


@router.put(
    "/users/{user_id}/desks",
    response_model=UserOut,
    tags=["users"],
    responses=problem_responses(InvalidRequest, Forbidden, users.UserNotFound),
)
async def set_desks(
    user_id: RowId, data: DeskAssignment, principal: CurrentPrincipal, uow: UoW
) -> UserOut:
    """Replace a user's desk memberships (admin); effective on their next request."""
    return await users.set_user_desks(uow, principal, user_id, data.desks)


@router.post(
    "/users/{user_id}/deactivate",
    response_model=UserOut,
    tags=["users"],
    responses=problem_responses(Forbidden, users.UserNotFound),
)
async def deactivate_user(user_id: RowId, principal: CurrentPrincipal, uow: UoW) -> UserOut:
    """Deactivate a user (admin): their tokens and API keys stop working at once."""
    return await users.set_user_active(uow, principal, user_id, active=False)


@router.post(
    "/api-keys",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    tags=["api keys"],
    responses=problem_responses(InvalidRequest, Forbidden),
)
async def create_api_key(
    data: ApiKeyCreate, principal: CurrentPrincipal, uow: UoW
) -> ApiKeyCreated:
    """Create an API key for yourself (or, as admin, for another user such as an agent).
    The `key` is returned only in this response; it acts as its owner narrowed to its scopes
    and desks, and can never approve or reject an order."""
    return await api_keys.create_api_key(uow, principal, data)


@router.get("/api-keys", response_model=list[ApiKeyOut], tags=["api keys"])
async def list_api_keys(principal: CurrentPrincipal, uow: UoW) -> list[ApiKeyOut]:
    """Your API keys (all keys for admin), without their secrets."""
    return await api_keys.list_api_keys(uow, principal)


@router.delete(
    "/api-keys/{key_id}",
    response_model=ApiKeyOut,
    tags=["api keys"],
    responses=problem_responses(api_keys.ApiKeyNotFound),
)
async def revoke_api_key(key_id: RowId, principal: CurrentPrincipal, uow: UoW) -> ApiKeyOut:
    """Revoke an API key; requests with it are refused from now on."""
    return await api_keys.revoke_api_key(uow, principal, key_id)
