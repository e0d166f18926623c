"""What the health checks ask the database, with their typed rows."""

from __future__ import annotations

from dataclasses import dataclass

from tradeops.db.prepared import query


@dataclass(frozen=True, slots=True)
class SchemaState:
    """The schema's migration revision (None before the first migration), and whether the
    server is a standby (in recovery, so it takes no writes)."""

    revision: str | None
    standby: bool


SCHEMA_STATE = query(
    "SELECT (SELECT version_num FROM alembic_version) AS revision, pg_is_in_recovery() AS standby",
    SchemaState,
    alone=True,  # one_statement: autocommit, outside a transaction
)


@dataclass(frozen=True, slots=True)
class Answer:
    answer: int


# The database answers a query at all.
PING = query("SELECT 1 AS answer", Answer, alone=True)
