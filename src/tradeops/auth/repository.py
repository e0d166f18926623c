"""The users, desk_members and api_keys tables' statements, with their typed rows."""

from __future__ import annotations

from collections.abc import Mapping
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


@dataclass(frozen=True, slots=True)
class PageSessionsEnded:
    """The acting user's new page-session generation; None when nobody is acting."""

    page_session_generation: int | None


END_PAGE_SESSIONS = query(
    "SELECT end_page_sessions() AS page_session_generation", PageSessionsEnded
)


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


def key_visible_to(principal: Principal, key_id: int, *, every_owner: bool) -> Select[Any]:
    """One key, if the principal may see it (as keys_visible_to)."""
    return keys_visible_to(principal, every_owner=every_owner).where(api_keys.c.id == key_id)


def insert_key(values: dict[str, Any], *, expires_in_days: int | None) -> Insert:
    """A new key; it expires `expires_in_days` from now (the database's now), or never."""
    expires = func.now() + func.make_interval(0, 0, 0, expires_in_days) if expires_in_days else None
    return insert(api_keys).values(**values, expires_at=expires).returning(api_keys.c.id)


def revoke_key(key_id: int) -> Update:
    return (
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )


# The keys auth.key_usage noted as used, written in one UPDATE off the request path, as the
# system principal (the api_keys policies let it update any key); a key written by another
# process in the meantime is left as it is.
TOUCH_KEYS = prepare(
    "UPDATE api_keys SET last_used_at = now()"
    " WHERE id = ANY(CAST(:ids AS bigint[]))"
    "   AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')"
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


# --- authentication ----------------------------------------------------------------------


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


def as_authenticated(caller: Authenticated | Mapping[str, Any]) -> Authenticated:
    """A one-statement read's `caller` (a tradeops_principal composite value, which asyncpg
    answers as a record) as the authenticating statement's row type. For a row type's
    __post_init__: a value that already is one (dataclasses.replace) stays as it is."""
    return caller if isinstance(caller, Authenticated) else Authenticated(**caller)


@dataclass(frozen=True, slots=True)
class CallerRow:
    """The row of a request sent in one statement: first `caller`, the authenticating
    statement's row (a tradeops_principal composite value, made an Authenticated once), then,
    in a subclass, what the statement answered them. A subclass that converts more of its
    fields calls CallerRow.__post_init__ first."""

    caller: Authenticated

    def __post_init__(self) -> None:
        object.__setattr__(self, "caller", as_authenticated(self.caller))


# The authenticating statement is a SQL function (migration 0019), so a one-statement read
# (GET /orders/{id}) authenticates exactly as every other request does: an API key by prefix
# and hash, else a person by id (a verified token's subject, a page session). For the row
# found it switches to the application role and publishes the context (db/uow.py
# CONTEXT_SETTINGS). Risk and admin keys see every desk unless the key names some; others
# the owner's desks, narrowed to the key's. `touch`: a key's last_used_at is over a minute
# old, so it is noted in KeyUsage, which writes it later on the primary: authenticating never
# writes.
AUTHENTICATE = query(
    "SELECT * FROM tradeops_authenticate(:prefix, :hash, :user_id, :email, :app_role, :request_id)",
    Authenticated,
)


# --- sign-in throttle ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admitted:
    """The account an attempt names (all None: none) and how long its email is locked."""

    id: int | None
    role: str | None
    password_hash: str | None
    active: bool
    page_session_generation: int | None
    locked_for: int


@dataclass(frozen=True, slots=True)
class Failures:
    failures: int


@dataclass(frozen=True, slots=True)
class LockedFor:
    locked_for: int


@dataclass(frozen=True, slots=True)
class Forgotten:
    forgotten: int


# Always one row: the account's columns are NULL for an unknown email (or the system user).
ADMIT = query(
    "SELECT u.id, u.role, u.password_hash, COALESCE(u.active, false) AS active,"
    " u.page_session_generation,"
    " COALESCE(GREATEST(0, ceil(extract(epoch FROM t.locked_until - now())))::int, 0)"
    " AS locked_for"
    " FROM (SELECT) AS attempt"
    " LEFT JOIN users u ON u.email = :email AND u.role <> 'system'"
    " LEFT JOIN sign_in_throttle t ON t.email_key = :key",
    Admitted,
)
# ON CONFLICT takes the row's lock and its WHERE sees the latest committed row: a failure
# arriving while the email is locked (by a concurrent attempt) updates nothing and returns
# no row, so it is refused, not counted. Concurrent failures each count exactly once.
# The new count is 1 when the last failure is older than the window (failures forgotten);
# from max_failures the email is locked for lockout seconds, doubling, at most max_lockout.
COUNT_FAILURE = query(
    "INSERT INTO sign_in_throttle AS t (email_key, failures, locked_until, last_failed_at)"
    " VALUES (:key, 1, CASE WHEN 1 >= :max_failures THEN now() + make_interval(secs => least("
    "  :max_lockout, :lockout * 2 ^ (1 - :max_failures))) END, now())"
    " ON CONFLICT (email_key) DO UPDATE SET"
    " failures = CASE WHEN t.last_failed_at < now() - make_interval(secs => :window) THEN 1"
    "  ELSE t.failures + 1 END,"
    " locked_until = CASE"
    "  WHEN t.last_failed_at < now() - make_interval(secs => :window)"
    "   THEN CASE WHEN 1 >= :max_failures THEN now() + make_interval(secs => least("
    "    :max_lockout, :lockout * 2 ^ (1 - :max_failures))) END"
    "  WHEN t.failures + 1 >= :max_failures THEN now() + make_interval(secs => least("
    "   :max_lockout, :lockout * 2 ^ (t.failures + 1 - :max_failures)))"
    "  END,"
    " last_failed_at = now()"
    " WHERE t.locked_until IS NULL OR t.locked_until <= now()"
    " RETURNING t.failures",
    Failures,
)
# A success forgets the failures. DELETE waits for a concurrent failure's row lock and then
# sees that row: if it locked the email, the transaction rolls back and the answer is 429.
FORGET_FAILURES = query(
    "DELETE FROM sign_in_throttle WHERE email_key = :key"
    " RETURNING GREATEST(0, ceil(extract(epoch FROM locked_until - now())))::int AS locked_for",
    LockedFor,
)
LOCKED_FOR = query(
    "SELECT GREATEST(0, ceil(extract(epoch FROM locked_until - now())))::int AS locked_for"
    " FROM sign_in_throttle WHERE email_key = :key",
    LockedFor,
)
LIFT_LOCKOUT = prepare("DELETE FROM sign_in_throttle WHERE email_key = :key")
PURGE_THROTTLE = query(
    "WITH forgotten AS (DELETE FROM sign_in_throttle"
    " WHERE last_failed_at < now() - make_interval(secs => :window)"
    " AND (locked_until IS NULL OR locked_until < now()) RETURNING 1)"
    " SELECT count(*) AS forgotten FROM forgotten",
    Forgotten,
)
