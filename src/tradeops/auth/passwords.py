"""Password hashing with argon2id (argon2-cffi's defaults follow RFC 9106's recommendation).

A check costs about half a second of CPU by design, so sign-in never runs one on the event
loop (every other request would wait) nor while holding a database connection: PasswordChecks
runs them in a few threads of their own (argon2 releases the GIL) and turns away sign-ins
beyond a bounded queue with 503, instead of letting them pile up until everything times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from tradeops.errors import DomainError

_hasher = PasswordHasher()
BUSY_RETRY_AFTER_SECONDS = 2
# Checks yield the CPU to serving requests: on Linux a thread's niceness is its own (and the
# threads argon2 starts for its lanes inherit it), so the event loop outranks the hashing.
CHECK_NICENESS = 10


class PasswordChecksBusy(DomainError):
    status = 503
    slug = "sign-in-busy"
    title = "Too many sign-ins at once"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@functools.cache
def _dummy_hash() -> str:
    """Verified when the account does not exist, so an unknown email costs as much as a wrong
    password. Made on first need, not at import: every `tradeops` command imports this module
    and most never check a password (PasswordChecks makes it as the application starts)."""
    return _hasher.hash("tradeops-dummy-password")


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return (
            _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
        )
    except (VerificationError, InvalidHashError):
        return False


class PasswordChecks:
    """Password checks off the event loop: `threads` at a time, at most `max_waiting` queued."""

    def __init__(self, threads: int | None, max_waiting: int) -> None:
        self.threads = threads or os.cpu_count() or 1
        self._admitted_at_most = self.threads + max_waiting
        self._admitted = 0
        self._executor = ThreadPoolExecutor(
            self.threads, thread_name_prefix="password-check", initializer=_yield_cpu
        )
        self._executor.submit(_dummy_hash)  # ready before the first unknown email arrives

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether the password matches (a missing hash costs the same and never matches)."""
        # Counted on the event loop, so no lock is needed: nothing awaits between test and set.
        if self._admitted >= self._admitted_at_most:
            raise PasswordChecksBusy(
                "Too many sign-ins are being checked; try again shortly.",
                headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
            )
        self._admitted += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, verify_password, password_hash, password
            )
        finally:
            self._admitted -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _yield_cpu() -> None:
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CHECK_NICENESS)
