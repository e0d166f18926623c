"""Which database errors are worth retrying: the one classifier the job retries use.

Transient means "the same work may well succeed on a new attempt": the connection went away
(the server restarted, a proxy dropped us, the client closed it mid-query), the server is
shutting down or starting up, or the transaction lost a race (serialization failure,
deadlock) or waited too long (a busy pool, a row held by another transaction). Anything else
(a bug, bad data, a refused permission) fails the same way every time and must not be retried.
"""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions._base as asyncpg_base
import psycopg
import psycopg.errors

from tradeops.db.errors import means_unavailable
from tradeops.db.uow import RETRYABLE_SQLSTATES, sqlstate_of

# By SQLSTATE, whichever driver raised it, besides what makes the database unavailable
# (class 08, shutdowns, start-up, too many connections: db.errors.means_unavailable).
TRANSIENT_SQLSTATES = RETRYABLE_SQLSTATES | {
    "55P03",  # lock_not_available: a row held by another transaction
    # query_canceled: our statement_timeout fired, in a job almost always while waiting
    # for a row another transaction holds; the next attempt usually finds it free.
    "57014",
}

# By type: the drivers' connection-level errors carry no SQLSTATE (they never reached the
# server, or the connection died under them).
TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    asyncpg.InterfaceError,  # "the underlying connection is closed", "…another operation…"
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.PostgresConnectionError,
    asyncpg.InternalClientError,  # a protocol state the client could not make sense of
    asyncpg.TooManyConnectionsError,
    psycopg.OperationalError,  # psycopg's class for every connection-level failure
    psycopg.errors.AdminShutdown,
    ConnectionError,  # refused, reset, aborted, broken pipe
    TimeoutError,  # a busy pool (db.pool.PoolTimeout), a connect that never answered
)

# Subclasses of a transient type that are bugs: a Python value asyncpg cannot encode.
NOT_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (asyncpg_base.DataError,)


def is_transient(error: BaseException) -> bool:
    """True for an error that a later attempt of the same work may well not meet."""
    for candidate in _causes(error):
        if isinstance(candidate, NOT_TRANSIENT_TYPES):
            return False
        code = sqlstate_of(candidate) or ""
        if code in TRANSIENT_SQLSTATES or means_unavailable(code):
            return True
        if isinstance(candidate, TRANSIENT_TYPES):
            return True
    return False


def _causes(error: BaseException) -> list[BaseException]:
    """The error and what it was raised from (procrastinate and SQLAlchemy wrap the driver's
    error), outermost first; a few levels are plenty and guard against cycles."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(chain) < 5 and current not in chain:
        chain.append(current)
        current = current.__cause__
    return chain
