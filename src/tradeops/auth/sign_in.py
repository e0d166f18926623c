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

from tradeops.audit import recording as audit
from tradeops.auth import repository as repo
from tradeops.auth.passwords import PasswordChecks
from tradeops.db.uow import ConnectionSource, UnitOfWork, in_transaction, record_despite_failure
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


def _throttled(email: str, seconds: int) -> LoginThrottled:
    log.warning("sign-in refused: locked", email=email, retry_after=seconds)
    return LoginThrottled(
        "Too many failed sign-ins for this account; try again later.",
        headers={"Retry-After": str(max(1, seconds))},
    )


async def sign_in(
    db: ConnectionSource,
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

    async def admit(uow: UnitOfWork) -> repo.Admitted:
        account = await uow.row(repo.ADMIT, {"email": email.lower(), "key": key})
        assert account is not None  # always one row
        if account.locked_for > 0:
            raise _throttled(email, account.locked_for)
        return account

    account = await in_transaction(db, admit)
    valid = await checks.verify(account.password_hash, password)
    if valid and account.active and account.id is not None:
        assert account.role is not None and account.page_session_generation is not None
        signed_in = SignedIn(account.id, account.role, account.page_session_generation)

        async def succeeded(uow: UnitOfWork) -> SignedIn:
            uow.request_id = request_id
            return await _record_success(uow, email, key, signed_in)

        return await in_transaction(db, succeeded)

    # A wrong password is the command failing; its count must commit all the same.
    await record_despite_failure(
        db,
        lambda uow: _record_failure(uow, email, key, account.id, policy),
        request_id=request_id,
    )
    return None


async def _record_success(uow: UnitOfWork, email: str, key: bytes, signed_in: SignedIn) -> SignedIn:
    forgotten = await uow.row(repo.FORGET_FAILURES, {"key": key})
    if forgotten is not None and forgotten.locked_for:
        raise _throttled(email, forgotten.locked_for)  # rolls the DELETE back
    log.info("sign-in succeeded", user_id=signed_in.user_id)
    await audit.record(
        uow, None, "login.succeeded", "login", email.lower(), acting_user=signed_in.user_id
    )
    return signed_in


async def _record_failure(
    uow: UnitOfWork, email: str, key: bytes, user_id: int | None, policy: ThrottlePolicy
) -> None:
    counted = await uow.row(
        repo.COUNT_FAILURE,
        {
            "key": key,
            "window": policy.failure_window_seconds,
            "max_failures": policy.max_failures,
            "lockout": policy.lockout_seconds,
            "max_lockout": MAX_LOCKOUT_SECONDS,
        },
    )
    if counted is None:  # a concurrent attempt locked the email after this one was admitted
        locked = await uow.row(repo.LOCKED_FOR, {"key": key})
        raise _throttled(email, locked.locked_for if locked and locked.locked_for else 1)
    failures = counted.failures
    log.warning("sign-in failed", email=email, failures=failures)
    await audit.record(
        uow,
        None,
        "login.failed",
        "login",
        email.lower(),
        after={"failures": failures},
        acting_user=user_id,  # None: no such account, written as anonymous
    )


async def forget_old_failures(uow: UnitOfWork, *, window_seconds: int) -> int:
    """Housekeeping: drop throttle rows whose last failure is older than the window (they
    count as no failures already), so the table holds only recently tried emails."""
    purged = await uow.row(repo.PURGE_THROTTLE, {"window": window_seconds})
    assert purged is not None  # an aggregate answers one row
    return purged.forgotten


async def lift_lockout(uow: UnitOfWork, email: str) -> None:
    """A password reset starts the email's count afresh. Only the system may (the table's
    policy): resets run from the command line, never from a request."""
    await uow.execute(repo.LIFT_LOCKOUT, {"key": email_key(email)})
