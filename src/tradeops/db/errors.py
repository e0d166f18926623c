"""PostgreSQL errors mapped by SQLSTATE to problems; no database message reaches a client."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

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


def problem_for(error: BaseException) -> DatabaseProblem:
    code = sqlstate_of(error) or ""
    if code == "23505":
        return DatabaseProblem(409, "conflict", "Conflict", "The resource already exists.")
    if code in INVALID_DATA or isinstance(error, asyncpg.exceptions.DataError):
        return DatabaseProblem(
            422,
            "constraint-violation",
            "The request is not valid",
            "The request breaks a data rule (a reference, a range or a required value).",
        )
    if code in RETRYABLE_SQLSTATES or code.startswith("08") or code in {"53300", "57P03"}:
        return DatabaseProblem(
            503,
            "database-busy",
            "Service busy",
            "The database could not complete the request now; retry after the given delay.",
            retry_after=1,
        )
    if code == "57014":
        return DatabaseProblem(
            504, "database-timeout", "Timed out", "The database took too long to answer."
        )
    if code == "42501":
        return DatabaseProblem(403, "forbidden", "Not allowed", "The action is not allowed.")
    return DatabaseProblem(500, "internal-error", "Internal error", "An unexpected error occurred.")
