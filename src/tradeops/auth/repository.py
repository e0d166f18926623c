"""The users, desk_members and api_keys tables' statements, with their typed rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Delete, Insert, Select, Update, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import aggregate_order_by, insert

from tradeops.auth.models import ApiKey, User
from tradeops.auth.principal import Principal, sees_every_desk
from tradeops.db.base import table_of
from tradeops.db.prepared import prepare, query
from tradeops.desks.models import Desk, DeskMember

users = table_of(User)
members = table_of(DeskMember)
desks = table_of(Desk)
api_keys = table_of(ApiKey)


# --- users ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserEmail:
    id: int
    email: str


@dataclass(frozen=True, slots=True)
class UserRole:
    id: int
    role: str


def _user_view() -> Select[Any]:
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


def user_by_id(user_id: int) -> Select[Any]:
    return _user_view().where(users.c.id == user_id)


def all_users() -> Select[Any]:
    return _user_view().order_by(users.c.email)


def emails_of(user_ids: set[int]) -> Select[Any]:
    return select(users.c.id, users.c.email).where(users.c.id.in_(user_ids))


def person_by_email(email: str) -> Select[Any]:
    """A user who can own keys (not the system), by email."""
    return select(users.c.id, users.c.role).where(
        users.c.email == email.lower(), users.c.role != "system"
    )


def insert_user(email: str, name: str, role: str, password_hash: str | None) -> Insert:
    """A new user, or nothing when the email is taken; returns the new id."""
    return (
        insert(users)
        .values(email=email.lower(), name=name, role=role, password_hash=password_hash)
        .on_conflict_do_nothing(index_elements=["email"])
        .returning(users.c.id)
    )


def set_active(user_id: int, *, active: bool) -> Update:
    return (
        update(users)
        .where(users.c.id == user_id, users.c.role != "system")
        .values(active=active)
        .returning(users.c.id)
    )


def set_password_hash(email: str, password_hash: str) -> Update:
    """A person's new password (agents and the system sign in with keys only)."""
    return (
        update(users)
        .where(users.c.email == email.strip().lower(), users.c.role.not_in(["system", "agent"]))
        .values(password_hash=password_hash)
        .returning(users.c.id)
    )


def clear_desks(user_id: int) -> Delete:
    return delete(members).where(members.c.user_id == user_id)


def add_desks(user_id: int, desk_ids: list[int]) -> Insert:
    return insert(members).values([{"user_id": user_id, "desk_id": d} for d in desk_ids])


END_PAGE_SESSIONS = prepare("SELECT end_page_sessions()")


# --- API keys ------------------------------------------------------------------------------


def _key_view() -> Select[Any]:
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


def key_by_id(key_id: int) -> Select[Any]:
    return _key_view().where(api_keys.c.id == key_id)


def keys_visible_to(principal: Principal, *, every_owner: bool) -> Select[Any]:
    """The keys a principal may see: their own, or with `every_owner` everyone's."""
    statement = _key_view().order_by(api_keys.c.id)
    return (
        statement if every_owner else statement.where(api_keys.c.owner_user_id == principal.user_id)
    )


def insert_key(values: dict[str, Any]) -> Insert:
    return insert(api_keys).values(**values).returning(api_keys.c.id)


def revoke_key(key_id: int) -> Update:
    return (
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )


@dataclass(frozen=True, slots=True)
class OwnerDesks:
    all_desks: bool
    desk_ids: list[int]


OWNER_DESKS = query(
    f"SELECT {sees_every_desk('u.role')} AS all_desks,"  # noqa: S608 - constants only
    " ARRAY(SELECT desk_id FROM desk_members WHERE user_id = u.id) AS desk_ids"
    " FROM users u WHERE u.id = :id",
    OwnerDesks,
)
