"""The database as the health checks see it: each a statement of its own on a pooled
connection, outside any request's transaction and before any authentication."""

from __future__ import annotations

from tradeops.db.uow import ConnectionSource, one_statement
from tradeops.health import repository as repo
from tradeops.health.repository import SchemaState


async def schema_state(db: ConnectionSource) -> SchemaState:
    """The schema's revision, and whether the server is a standby."""
    state = await one_statement(db, repo.SCHEMA_STATE, {})
    assert state is not None  # a SELECT without FROM answers one row
    return state


async def ping(db: ConnectionSource) -> None:
    """Returns once the database has answered a query; raises if it cannot."""
    await one_statement(db, repo.PING, {})
