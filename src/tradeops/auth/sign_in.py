"""Signing in with an email and a password, throttled per email; owns sign_in_throttle.

An attempt is two short transactions around the password check, never one long one:

1. admit: one statement reads the account (if any) and the email's throttle state; a locked
   email is refused at once (429), before any hashing.
2. the password is checked in PasswordChecks' threads, with no transaction open and no
   connection held (the check takes ~0.5 s of CPU).
3. record: one statement records the outcome under the throttle row's lock. A failure counts
   (the max_failures-th locks the email); a success clears the count. Either way, if a
   concurrent attempt locked the email since step 1, this attempt is refused with 429 exactly
   as if it had arrived after the lock, and is not counted. So however many attempts arrive
   at once, none gets in once the lock is recorded.

Failures are counted per email, whether or not it has an account, and an unknown email's
password is checked against a dummy hash: known and unknown emails get the same answers at
the same speed, so neither the answers nor the lockout reveal who has an account.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple

import structlog
from sqlalchemy import text

from tradeops.audit import service as audit
from tradeops.auth.passwords import PasswordChecks
from tradeops.db.uow import Connections, UnitOfWork, in_transaction, record_despite_failure
from tradeops.errors import TooManyRequests
from tradeops.settings import Settings

log = structlog.get_logger(component="tradeops.auth")

# The longest lock, however many failures: the lock doubles from login_lockout_seconds.
MAX_LOCKOUT_SECONDS = 900


class LoginThrottled(TooManyRequests):
    slug = "login-throttled"
    title = "Too many failed sign-ins"


class SignedIn(NamedTuple):
    user_id: int
    role: str
    page_session_generation: int  # for a page session begun now


class LoginAccount(NamedTuple):
    """The account an email names, as read before the password check (user_id None if none)."""

    user_id: int | None
    role: str
    password_hash: str | None
    active: bool
    page_session_generation: int


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    max_failures: int
    lockout_seconds: int
    failure_window_seconds: int

    @classmethod
    def of(cls, settings: Settings) -> ThrottlePolicy:
        return cls(
            settings.login_max_failures,
            settings.login_lockout_seconds,
            settings.login_failure_window_seconds,
        )


def email_key(email: str) -> bytes:
    """The throttle's key for an email as typed: case does not make another email."""
    return hashlib.sha256(email.lower().encode()).digest()


# Always one row: the account's columns are NULL for an unknown email (or the system user).
_ADMIT = text(
    "SELECT u.id, u.role, u.password_hash, COALESCE(u.active, false) AS active,"
    " u.page_session_generation,"
    " COALESCE(GREATEST(0, ceil(extract(epoch FROM t.locked_until - now())))::int, 0)"
    " AS locked_for"
    " FROM (SELECT) AS attempt"
    " LEFT JOIN users u ON u.email = :email AND u.role <> 'system'"
    " LEFT JOIN sign_in_throttle t ON t.email_key = :key"
)
# ON CONFLICT takes the row's lock and its WHERE sees the latest committed row: a failure
# arriving while the email is locked (by a concurrent attempt) updates nothing and returns
# no row, so it is refused, not counted. Concurrent failures each count exactly once.
# The new count is 1 when the last failure is older than the window (failures forgotten);
# from max_failures the email is locked for lockout seconds, doubling, at most max_lockout.
_COUNT_FAILURE = text(
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
    " RETURNING t.failures"
)
# A success forgets the failures. DELETE waits for a concurrent failure's row lock and then
# sees that row: if it locked the email, the transaction rolls back and the answer is 429.
_FORGET_FAILURES = text(
    "DELETE FROM sign_in_throttle WHERE email_key = :key"
    " RETURNING GREATEST(0, ceil(extract(epoch FROM locked_until - now())))::int"
)
_LOCKED_FOR = text(
    "SELECT GREATEST(0, ceil(extract(epoch FROM locked_until - now())))::int"
    " FROM sign_in_throttle WHERE email_key = :key"
)
_LIFT_LOCKOUT = text("DELETE FROM sign_in_throttle WHERE email_key = :key")
_PURGE = text(
    "WITH forgotten AS (DELETE FROM sign_in_throttle"
    " WHERE last_failed_at < now() - make_interval(secs => :window)"
    " AND (locked_until IS NULL OR locked_until < now()) RETURNING 1)"
    " SELECT count(*) FROM forgotten"
)


def _throttled(email: str, seconds: int) -> LoginThrottled:
    log.warning("sign-in refused: locked", email=email, retry_after=seconds)
    return LoginThrottled(
        "Too many failed sign-ins for this account; try again later.",
        headers={"Retry-After": str(max(1, seconds))},
    )


async def sign_in(
    db: Connections,
    checks: PasswordChecks,
    email: str,
    password: str,
    policy: ThrottlePolicy,
    request_id: str | None = None,
) -> SignedIn | None:
    """Who signed in, for the right password of an active account; None otherwise (the
    failure is committed). A locked email gets LoginThrottled (429), known or not; from the
    `max_failures`-th failure in a row it is locked for `lockout_seconds`, doubling with each
    further failure (at most 15 minutes). PasswordChecksBusy (503) when too many wait."""
    key = email_key(email)

    async def admit(uow: UnitOfWork) -> LoginAccount:
        row = (await uow.execute(_ADMIT, {"email": email.lower(), "key": key})).one()
        if row.locked_for > 0:
            raise _throttled(email, row.locked_for)
        return LoginAccount(
            row.id, row.role, row.password_hash, row.active, row.page_session_generation
        )

    account = await in_transaction(db, admit)
    valid = await checks.verify(account.password_hash, password)
    if valid and account.active and account.user_id is not None:
        signed_in = SignedIn(account.user_id, account.role, account.page_session_generation)

        async def succeeded(uow: UnitOfWork) -> SignedIn:
            uow.request_id = request_id
            return await _record_success(uow, email, key, signed_in)

        return await in_transaction(db, succeeded)

    # A wrong password is the command failing; its count must commit all the same.
    await record_despite_failure(
        db,
        lambda uow: _record_failure(uow, email, key, account.user_id, policy),
        request_id=request_id,
    )
    return None


async def _record_success(uow: UnitOfWork, email: str, key: bytes, signed_in: SignedIn) -> SignedIn:
    locked_for = await uow.scalar(_FORGET_FAILURES, {"key": key})
    if locked_for:
        raise _throttled(email, locked_for)  # rolls the DELETE back
    log.info("sign-in succeeded", user_id=signed_in.user_id)
    actor = f"user:{signed_in.user_id}"
    await audit.record(uow, None, "login.succeeded", "login", email.lower(), actor=actor)
    return signed_in


async def _record_failure(
    uow: UnitOfWork, email: str, key: bytes, user_id: int | None, policy: ThrottlePolicy
) -> None:
    failures = await uow.scalar(
        _COUNT_FAILURE,
        {
            "key": key,
            "window": policy.failure_window_seconds,
            "max_failures": policy.max_failures,
            "lockout": policy.lockout_seconds,
            "max_lockout": MAX_LOCKOUT_SECONDS,
        },
    )
    if failures is None:  # a concurrent attempt locked the email after this one was admitted
        raise _throttled(email, await uow.scalar(_LOCKED_FOR, {"key": key}) or 1)
    log.warning("sign-in failed", email=email, failures=failures)
    await audit.record(
        uow,
        None,
        "login.failed",
        "login",
        email.lower(),
        after={"failures": failures},
        actor=f"user:{user_id}" if user_id is not None else "anonymous",
    )


async def forget_old_failures(uow: UnitOfWork, *, window_seconds: int) -> int:
    """Housekeeping: drop throttle rows whose last failure is older than the window (they
    count as no failures already), so the table holds only recently tried emails."""
    return int(await uow.scalar(_PURGE, {"window": window_seconds}))


async def lift_lockout(uow: UnitOfWork, email: str) -> None:
    """A password reset starts the email's count afresh. Only the system may (the table's
    policy): resets run from the command line, never from a request."""
    await uow.execute(_LIFT_LOCKOUT, {"key": email_key(email)})
