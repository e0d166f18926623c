"""Every typed query's columns are its row type's fields: prepared against the migrated
schema (asyncpg describes a prepared statement's result without running it), so a renamed
column or a field the query does not return fails here, not in a request."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

import tradeops
from tradeops.audit import repository as audit_repo
from tradeops.audit.repository import AuditFilters, ListedEvent
from tradeops.auth.principal import SYSTEM
from tradeops.db.prepared import QUERIES, prepare
from tradeops.orders import repository as orders_repo
from tradeops.orders.schemas import OrderFilters, OrderOut
from tradeops.orders.states import OrderStatus, RiskStatus, Side


def _import_every_module() -> None:
    """Typed queries register when their module is imported: import them all."""
    for module in pkgutil.walk_packages(tradeops.__path__, "tradeops."):
        if ".migrations." not in module.name:
            importlib.import_module(module.name)


_import_every_module()


def is_named_tuple(row_type: type[Any]) -> bool:
    """A NamedTuple row (immutable, typed): audit verification's per-event row, built a
    million times in a full run, where a frozen dataclass costs ten times as much."""
    return issubclass(row_type, tuple) and hasattr(row_type, "_fields")


def field_names(row_type: type[Any]) -> set[str]:
    if is_named_tuple(row_type):
        return set(row_type._fields)
    if dataclasses.is_dataclass(row_type):
        return {f.name for f in dataclasses.fields(row_type)}
    assert issubclass(row_type, BaseModel), row_type
    return set(row_type.model_fields)


async def columns(connection: asyncpg.Connection, sql: str) -> list[str]:
    statement = await connection.prepare(sql)
    return [attribute.name for attribute in statement.get_attributes()]


# Statements built per call, with every filter they can take.
BUILT_PER_CALL = [
    (
        orders_repo.filtered_orders(
            SYSTEM,
            OrderFilters(
                status=OrderStatus.PENDING,
                statuses=("PENDING",),
                risk_status=RiskStatus.PASSED,
                made_by=1,
                client_id="C",
                symbol="S",
                side=Side.BUY,
                client_order_id="K",
                desk="D",
            ),
            orders_repo.ListFilterKeys(client=1, instrument=2, desk=3),
            after=(10,),
            limit=5,
        ),
        OrderOut,
    ),
    (
        orders_repo.filtered_orders(
            SYSTEM,
            OrderFilters(
                created_from=datetime(2026, 1, 1, tzinfo=UTC), created_to=datetime.now(UTC)
            ),
            orders_repo.ListFilterKeys(),
            after=(datetime.now(UTC), 10),
            limit=5,
        ),
        OrderOut,
    ),
    (audit_repo.filtered_events(AuditFilters(entity="order"), after=1, limit=5), ListedEvent),
]


def test_the_queries_are_registered() -> None:
    assert len(QUERIES) >= 25


async def test_every_typed_query_returns_its_types_fields(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        checked = [(q.prepared.sql, q.into) for q in QUERIES]
        checked += [(prepare(statement).sql, into) for statement, into in BUILT_PER_CALL]
        mismatches = {}
        for sql, into in checked:
            returned = await columns(connection, sql)
            assert len(returned) == len(set(returned)), f"a column twice in {sql}"
            if set(returned) != field_names(into):
                mismatches[into.__name__] = (set(returned) ^ field_names(into), sql[:80])
        assert mismatches == {}
    finally:
        await connection.close()


@pytest.mark.parametrize("row_type", sorted({q.into for q in QUERIES}, key=str))
def test_row_types_are_frozen_slotted_dataclasses_or_models(row_type: type[Any]) -> None:
    if is_named_tuple(row_type):
        return  # immutable as a tuple, fields typed
    if dataclasses.is_dataclass(row_type):
        assert row_type.__dataclass_params__.frozen, row_type  # type: ignore[attr-defined]
        assert "__slots__" in vars(row_type), row_type
    else:
        assert issubclass(row_type, BaseModel), row_type
