"""The one mapping from database failures to problems, for what the driver and SQLAlchemy
wrap (the real failures are driven through PostgreSQL in test_errors_and_limits.py)."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as EnginePoolTimeout

from tradeops.db.errors import problem_for, refuses_the_change
from tradeops.db.transient import is_transient


def wrapped(error: BaseException, *, invalidated: bool = False) -> DBAPIError:
    return DBAPIError("SELECT 1", None, error, connection_invalidated=invalidated)


@pytest.mark.parametrize(
    "error",
    [
        wrapped(Exception("server closed the connection unexpectedly"), invalidated=True),
        wrapped(asyncpg.exceptions.ConnectionDoesNotExistError("closed")),
        EnginePoolTimeout("QueuePool limit of size 5 overflow 10 reached"),
        TimeoutError(),
    ],
)
def test_wrapped_connection_failures_are_503_with_retry_after(error: BaseException) -> None:
    problem = problem_for(error)
    assert (problem.status, problem.slug) == (503, "database-unavailable")
    assert problem.retry_after


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (asyncpg.exceptions.QueryCanceledError("canceling statement due to timeout"), 504),
        (asyncpg.exceptions.SerializationError("could not serialize"), 503),
        (asyncpg.exceptions.ReadOnlySQLTransactionError("read-only"), 503),
        (asyncpg.exceptions.UniqueViolationError("duplicate"), 409),
        (asyncpg.exceptions.UndefinedTableError("no such table"), 500),
    ],
)
def test_sqlstates_keep_their_meaning(error: BaseException, status: int) -> None:
    assert problem_for(error).status == status


@pytest.mark.parametrize(
    ("error", "refusal"),
    [
        (asyncpg.exceptions.CheckViolationError("maker-checker: order 7"), True),
        (asyncpg.exceptions.UniqueViolationError("duplicate"), True),
        (asyncpg.exceptions.ForeignKeyViolationError("unknown order"), True),
        (asyncpg.exceptions.RaiseError("order 7 held"), True),
        (wrapped(asyncpg.exceptions.CheckViolationError("wrapped")), True),
        (asyncpg.exceptions.SerializationError("could not serialize"), False),
        (asyncpg.exceptions.DeadlockDetectedError("deadlock"), False),
        (asyncpg.exceptions.LockNotAvailableError("row held"), False),
        (asyncpg.exceptions.QueryCanceledError("statement timeout"), False),
        (asyncpg.exceptions.AdminShutdownError("shutting down"), False),
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed"), False),
        (asyncpg.exceptions.UndefinedColumnError("a bug"), False),
        (asyncpg.exceptions.UntranslatableCharacterError("bad text"), False),
    ],
)
def test_a_refusal_of_the_change_is_never_transient(error: BaseException, refusal: bool) -> None:
    """What a bulk command answers for one step (the database refused that change) against
    what fails the whole command: a race or a lost connection (retried), a bug, bad data."""
    assert refuses_the_change(error) is refusal
    assert not (refusal and is_transient(error))
