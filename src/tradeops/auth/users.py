"""People and service accounts: create, list, deactivate, set desks (signing in: sign_in.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import aggregate_order_by, insert

from tradeops.audit import service as audit
from tradeops.auth.models import User
from tradeops.auth.passwords import hash_password
from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.auth.sign_in import lift_lockout
from tradeops.db.base import table_of
from tradeops.db.uow import UnitOfWork
from tradeops.desks.models import Desk, DeskMember
from tradeops.desks.service import desk_ids_by_code
from tradeops.errors import Conflict, NotFound

users = table_of(User)
members = table_of(DeskMember)
desks = table_of(Desk)

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


class UserOut(BaseModel):
    id: int
    email: str
    name: str
    role: str
    active: bool
    desks: list[str]
    created_at: datetime


class UserNotFound(NotFound):
    slug = "user-not-found"
    title = "User not found"


class UserExists(Conflict):
    slug = "user-exists"
    title = "User already exists"


def _user_view() -> Any:
    desk_codes = (
        # In code order: an aggregate's order is otherwise whatever the join's plan gives.
        select(
            func.coalesce(
                func.array_agg(aggregate_order_by(desks.c.code, desks.c.code)),
                text("'{}'::text[]"),
            )
        )
        .select_from(members.join(desks, desks.c.id == members.c.desk_id))
        .where(members.c.user_id == users.c.id)
        .scalar_subquery()
    )
    return select(
        users.c.id,
        users.c.email,
        users.c.name,
        users.c.role,
        users.c.active,
        desk_codes.label("desks"),
        users.c.created_at,
    ).where(users.c.role != "system")


async def get_user(uow: UnitOfWork, principal: Principal, user_id: int) -> UserOut:
    if user_id != principal.user_id:
        authorize(principal, Action.MANAGE_USERS)
    row = await uow.one_or_none(_user_view().where(users.c.id == user_id))
    if row is None:
        raise UserNotFound(f"No user {user_id}.")
    return UserOut.model_validate(row._mapping)


async def emails_of(uow: UnitOfWork, user_ids: set[int]) -> dict[int, str]:
    """Who the ids in a history are. Any signed-in person may read names and emails (the
    maker and approver of an order are shown with it), never anything more."""
    if not user_ids:
        return {}
    rows = await uow.execute(select(users.c.id, users.c.email).where(users.c.id.in_(user_ids)))
    return {row.id: row.email for row in rows}


async def list_users(uow: UnitOfWork, principal: Principal) -> list[UserOut]:
    authorize(principal, Action.MANAGE_USERS)
    rows = await uow.execute(_user_view().order_by(users.c.email))
    return [UserOut.model_validate(r._mapping) for r in rows]


async def create_user(uow: UnitOfWork, principal: Principal, data: UserCreate) -> UserOut:
    authorize(principal, Action.MANAGE_USERS)
    password = data.password.get_secret_value() if data.password else None
    user_id = await uow.scalar(
        insert(users)
        .values(
            email=data.email.lower(),
            name=data.name,
            role=data.role,
            password_hash=hash_password(password) if password else None,
        )
        .on_conflict_do_nothing(index_elements=["email"])
        .returning(users.c.id)
    )
    if user_id is None:
        raise UserExists(f"A user with email {data.email} already exists.")
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
    changed = await uow.scalar(
        update(users)
        .where(users.c.id == user_id, users.c.role != "system")
        .values(active=active)
        .returning(users.c.id)
    )
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
    user_id = await uow.scalar(
        update(users)
        .where(users.c.email == email.strip().lower(), users.c.role.not_in(["system", "agent"]))
        .values(password_hash=hash_password(password))
        .returning(users.c.id)
    )
    if user_id is None:
        raise UserNotFound(f"No person with email {email} (agents sign in with API keys only).")
    await lift_lockout(uow, email)
    changed = await get_user(uow, principal, user_id)
    await audit.record(uow, principal, "user.password_set", "user", user_id, after=changed)
    return changed


async def _replace_desks(uow: UnitOfWork, user_id: int, desk_codes: list[str]) -> None:
    ids = await desk_ids_by_code(uow, desk_codes) if desk_codes else {}
    await uow.execute(delete(members).where(members.c.user_id == user_id))
    if ids:
        await uow.execute(
            insert(members), [{"user_id": user_id, "desk_id": d} for d in ids.values()]
        )


_END_PAGE_SESSIONS = text("SELECT end_page_sessions()")


async def end_page_sessions(uow: UnitOfWork) -> None:
    """Sign the acting user out of every page session (the cookies carry the generation that
    this moves on); the database function touches no other user."""
    if await uow.scalar(_END_PAGE_SESSIONS) is None:
        raise LookupError("no acting user to sign out")
