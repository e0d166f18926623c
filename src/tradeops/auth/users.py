"""People and service accounts: create, list, deactivate, set desks (signing in: sign_in.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints

from tradeops.audit import recording as audit
from tradeops.auth import repository as repo
from tradeops.auth.passwords import hash_password
from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.auth.schemas import UserOut
from tradeops.auth.sign_in import lift_lockout
from tradeops.db.prepared import Id
from tradeops.db.uow import UnitOfWork
from tradeops.desks.service import desk_ids_by_code
from tradeops.errors import Conflict, NotFound

PersonRole = Literal["trader", "agent", "approver", "risk", "admin"]
# A plain shape check: reserved domains such as demo.test are fine for demo and test accounts.
Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_lower=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    ),
]
DeskCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9-]{1,31}$")]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email = Field(examples=["trader@bank.example"])
    name: str = Field(min_length=1, max_length=200)
    role: PersonRole
    desks: list[DeskCode] = Field(default_factory=list, description='Desk codes, e.g. ["EQ-US"]')
    password: SecretStr | None = Field(
        default=None, min_length=12, description="12+ characters; omit for agent accounts"
    )


class UserNotFound(NotFound):
    slug = "user-not-found"
    title = "User not found"


class UserExists(Conflict):
    slug = "user-exists"
    title = "User already exists"


async def get_user(uow: UnitOfWork, principal: Principal, user_id: int) -> UserOut:
    if user_id != principal.user_id:
        authorize(principal, Action.MANAGE_USERS)
    user = await uow.row_of(repo.user_by_id(user_id), UserOut)
    if user is None:
        raise UserNotFound(f"No user {user_id}.")
    return user


async def emails_of(uow: UnitOfWork, user_ids: set[int]) -> dict[int, str]:
    """Who the ids in a history are. Any signed-in person may read names and emails (the
    maker and approver of an order are shown with it), never anything more."""
    if not user_ids:
        return {}
    rows = await uow.rows_of(repo.emails_of(user_ids), repo.UserEmail)
    return {row.id: row.email for row in rows}


async def list_users(uow: UnitOfWork, principal: Principal) -> list[UserOut]:
    authorize(principal, Action.MANAGE_USERS)
    return await uow.rows_of(repo.all_users(), UserOut)


async def create_user(uow: UnitOfWork, principal: Principal, data: UserCreate) -> UserOut:
    authorize(principal, Action.MANAGE_USERS)
    password = data.password.get_secret_value() if data.password else None
    password_hash = hash_password(password) if password else None
    inserted = await uow.row_of(
        repo.insert_user(data.email, data.name, data.role, password_hash), Id
    )
    if inserted is None:
        raise UserExists(f"A user with email {data.email} already exists.")
    user_id = inserted.id
    await _replace_desks(uow, user_id, data.desks)
    created = await get_user(uow, principal, user_id)
    await audit.record(uow, principal, "user.created", "user", user_id, after=created)
    return created


async def set_user_desks(
    uow: UnitOfWork, principal: Principal, user_id: int, desk_codes: list[str]
) -> UserOut:
    authorize(principal, Action.MANAGE_USERS)
    before = await get_user(uow, principal, user_id)
    await _replace_desks(uow, user_id, desk_codes)
    after = await get_user(uow, principal, user_id)
    await audit.record(
        uow, principal, "user.desks_set", "user", user_id, before=before, after=after
    )
    return after


async def set_user_active(
    uow: UnitOfWork, principal: Principal, user_id: int, *, active: bool
) -> UserOut:
    """Deactivating takes effect at once: tokens and the user's API keys stop working."""
    authorize(principal, Action.MANAGE_USERS)
    before = await get_user(uow, principal, user_id)
    changed = await uow.row_of(repo.set_active(user_id, active=active), Id)
    if changed is None:
        raise UserNotFound(f"No user {user_id}.")
    after = await get_user(uow, principal, user_id)
    action = "user.activated" if active else "user.deactivated"
    await audit.record(uow, principal, action, "user", user_id, before=before, after=after)
    return after


async def set_password(uow: UnitOfWork, principal: Principal, email: str, password: str) -> UserOut:
    """Give a person a new password and lift any sign-in lockout, as a reset by an
    administrator should; the audit event records no secret."""
    authorize(principal, Action.MANAGE_USERS)
    updated = await uow.row_of(repo.set_password_hash(email, hash_password(password)), Id)
    if updated is None:
        raise UserNotFound(f"No person with email {email} (agents sign in with API keys only).")
    user_id = updated.id
    await lift_lockout(uow, email)
    changed = await get_user(uow, principal, user_id)
    await audit.record(uow, principal, "user.password_set", "user", user_id, after=changed)
    return changed


async def _replace_desks(uow: UnitOfWork, user_id: int, desk_codes: list[str]) -> None:
    ids = await desk_ids_by_code(uow, desk_codes) if desk_codes else {}
    await uow.execute(repo.clear_desks(user_id))
    if ids:
        await uow.execute(repo.add_desks(user_id, list(ids.values())))


async def end_page_sessions(uow: UnitOfWork) -> None:
    """Sign the acting user out of every page session (the cookies carry the generation that
    this moves on); the database function touches no other user."""
    ended = await uow.row(repo.END_PAGE_SESSIONS)
    if ended is None or ended.page_session_generation is None:
        raise LookupError("no acting user to sign out")
