"""PostgreSQL errors mapped by SQLSTATE to problems; no database message reaches a client.

The one mapping from a database failure to a problem: HTTP, MCP and the pages use it.
Whatever says the database is not there for us now (a refused or dropped connection, a
server shutting down or starting up, a standby that refuses writes, a pool with no free
connection) is a 503 with Retry-After: nothing was done, the client may try again.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as EnginePoolTimeout

from tradeops.db.pool import PoolTimeout
from tradeops.db.uow import RETRYABLE_SQLSTATES, sqlstate_of


@dataclass(frozen=True)
class DatabaseProblem:
    status: int
    slug: str
    title: str
    detail: str
    retry_after: int | None = None


# References, checks, nulls, ranges, bad text (a NUL byte, an untranslatable escape) and
# out-of-range dates: the request's data is wrong, whichever layer noticed first.
INVALID_DATA = frozenset(
    {"23503", "23514", "23502", "23P01", "22003", "22P02", "22021", "22P05", "22007", "22008"}
)
# Class 08 (connection exceptions) by prefix, and: too many connections, admin shutdown,
# crash shutdown, cannot connect now (starting up, recovering).
UNAVAILABLE_SQLSTATES = frozenset({"53300", "57P01", "57P02", "57P03"})
# The triggers of maker-checker (migration 0011) raise check_violation naming this: the order's
# state, not the request's data, refuses the change, and reading the order again shows why.
MAKER_CHECKER_CONSTRAINT = "orders_maker_checker"
# A trigger's RAISE without an ERRCODE of its own (ours always name one: an operator's may not).
RAISE_EXCEPTION_SQLSTATE = "P0001"
READ_ONLY_SQLSTATE = "25006"  # read_only_sql_transaction: a standby, or a primary set read-only
UNAVAILABLE_RETRY_AFTER = 2

# The driver's own failures when the connection is gone: asyncpg's InterfaceError (its
# ConnectionDoesNotExistError: "connection was closed in the middle of operation") and
# InternalClientError; the socket's OSError (refused, reset; TimeoutError is one too); no
# free connection in our pool or a SQLAlchemy engine's.
CONNECTION_FAILURES: tuple[type[BaseException], ...] = (
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    PoolTimeout,
    EnginePoolTimeout,
)

MAKER_CHECKER_REFUSED = DatabaseProblem(
    409,
    "maker-checker-refused",
    "Refused by the maker-checker rules",
    "The order's maker-checker rules refuse this change as the order is now: an approval needs"
    " a REVIEWED order whose risk check passed, and neither approval nor rejection may come"
    " from the order's maker. Read the order again before deciding.",
)
UNAVAILABLE = DatabaseProblem(
    503,
    "database-unavailable",
    "Service unavailable",
    "The database is not reachable now; retry after the given delay.",
    retry_after=UNAVAILABLE_RETRY_AFTER,
)
READ_ONLY = DatabaseProblem(
    503,
    "database-read-only",
    "Service unavailable",
    "The database is read-only (a standby) and cannot take changes now; retry after the"
    " given delay.",
    retry_after=UNAVAILABLE_RETRY_AFTER,
)


def means_unavailable(sqlstate: str) -> bool:
    """Class 08 (connection exceptions) or a server refusing sessions now."""
    return sqlstate.startswith("08") or sqlstate in UNAVAILABLE_SQLSTATES


def is_connection_failure(error: BaseException) -> bool:
    if isinstance(error, CONNECTION_FAILURES):
        return True
    # SQLAlchemy wraps the driver's error; its `connection_invalidated` says the link broke.
    return isinstance(error, DBAPIError) and (
        error.connection_invalidated or isinstance(error.orig, CONNECTION_FAILURES)
    )


def refuses_the_change(error: BaseException) -> bool:
    """The database refused the change itself: a constraint or a rule's trigger (class 23,
    integrity constraint violation) or a trigger's bare RAISE. The same change is refused
    again; nothing about the connection or a race (those are transient, db.transient), nor a
    bug, so a command of many steps may answer it for that step alone."""
    code = sqlstate_of(error) or ""
    return code.startswith("23") or code == RAISE_EXCEPTION_SQLSTATE


def constraint_of(error: BaseException) -> str | None:
    """The constraint an asyncpg error names (a check, a key, a trigger's own), or None."""
    candidates: list[object] = [error]
    if isinstance(error, DBAPIError):
        candidates += [error.orig, getattr(error.orig, "__cause__", None)]
    for candidate in candidates:
        name = getattr(candidate, "constraint_name", None)
        if isinstance(name, str):
            return name
    return None


def problem_for(error: BaseException) -> DatabaseProblem:
    code = sqlstate_of(error) or ""
    if code == "23505":
        return DatabaseProblem(409, "conflict", "Conflict", "The resource already exists.")
    if code == "23514" and constraint_of(error) == MAKER_CHECKER_CONSTRAINT:
        return MAKER_CHECKER_REFUSED
    if code in INVALID_DATA or isinstance(error, asyncpg.exceptions.DataError):
        return DatabaseProblem(
            422,
            "constraint-violation",
            "The request is not valid",
            "The request breaks a data rule (a reference, a range or a required value).",
        )
    if code in RETRYABLE_SQLSTATES:
        return DatabaseProblem(
            503,
            "database-busy",
            "Service busy",
            "The database could not complete the request now; retry after the given delay.",
            retry_after=1,
        )
    if code == READ_ONLY_SQLSTATE:
        return READ_ONLY
    if means_unavailable(code) or is_connection_failure(error):
        return UNAVAILABLE
    # A statement cancelled past its time limit, or past its limit for waiting on a lock
    # (a write sent alone sets lock_timeout, its BEGIN-less stand-in): nothing was written.
    if code in ("57014", "55P03"):
        return DatabaseProblem(
            504, "database-timeout", "Timed out", "The database took too long to answer."
        )
    if code == "42501":
        return DatabaseProblem(403, "forbidden", "Not allowed", "The action is not allowed.")
    return DatabaseProblem(500, "internal-error", "Internal error", "An unexpected error occurred.")
