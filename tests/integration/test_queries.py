"""Every typed query's columns are its row type's fields: prepared against the migrated
schema (asyncpg describes a prepared statement's result without running it), so a renamed
column or a field the query does not return fails here, not in a request. Statements built per
call are checked by one representative build each (BUILT_PER_CALL), and a composite column
typed as a row type (a one-statement read's caller and order) by the composite's own names."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from datetime import UTC, datetime, time
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

import tradeops
from tradeops.audit import repository as audit_repo
from tradeops.audit.repository import AuditFilters, ListedEvent
from tradeops.auth import repository as auth_repo
from tradeops.auth.principal import SYSTEM
from tradeops.auth.schemas import ApiKeyOut, UserOut
from tradeops.clients import repository as clients_repo
from tradeops.clients.schemas import ClientOut
from tradeops.db.prepared import QUERIES, Id, prepare
from tradeops.desks import repository as desks_repo
from tradeops.instruments import repository as instruments_repo
from tradeops.instruments.schemas import InstrumentOut
from tradeops.orders import repository as orders_repo
from tradeops.orders.schemas import OrderFilters, OrderOut
from tradeops.orders.states import OrderStatus, RiskStatus, Side
from tradeops.positions import repository as positions_repo


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


async def composite_mismatches(
    connection: asyncpg.Connection, sql: str, row_type: type[Any]
) -> dict[str, set[str]]:
    """For each column of a composite type (a one-statement read's `caller`, `found`) whose
    field is typed as a row type: the names the composite and that type do not share. A
    pydantic model ignores extra names (orders_as_shown's desk_id), so only its fields count."""
    statement = await connection.prepare(sql)
    composites = {
        a.name: a.type.oid for a in statement.get_attributes() if a.type.kind == "composite"
    }
    if not composites:
        return {}
    hints = typing.get_type_hints(row_type)
    mismatches = {}
    for name, oid in composites.items():
        nested = [t for t in typing.get_args(hints[name]) or (hints[name],) if t is not type(None)]
        assert len(nested) == 1, f"{row_type.__name__}.{name} is not typed as one row type"
        names = set(
            await connection.fetchval(
                "SELECT array_agg(attname::text) FROM pg_attribute"
                " WHERE attrelid = (SELECT typrelid FROM pg_type WHERE oid = $1)"
                " AND attnum > 0 AND NOT attisdropped",
                oid,
            )
        )
        wanted = field_names(nested[0])
        differ = wanted - names if issubclass(nested[0], BaseModel) else wanted ^ names
        if differ:
            mismatches[f"{row_type.__name__}.{name}"] = differ
    return mismatches


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
    # Users, desks, API keys and reference data, one build of each read and write.
    (auth_repo.user_by_id(1), UserOut),
    (auth_repo.all_users(), UserOut),
    (auth_repo.emails_of({1, 2}), auth_repo.UserEmail),
    (auth_repo.person_by_email("a@b.c"), auth_repo.UserRole),
    (auth_repo.insert_user("a@b.c", "A", "trader", None), Id),
    (auth_repo.set_active(1, active=False), Id),
    (auth_repo.set_password_hash("a@b.c", "hash"), Id),
    (auth_repo.key_by_id(1), ApiKeyOut),
    (auth_repo.keys_visible_to(SYSTEM, every_owner=False), ApiKeyOut),
    (auth_repo.key_visible_to(SYSTEM, 1, every_owner=False), ApiKeyOut),
    (
        auth_repo.insert_key(
            {"owner_user_id": 1, "name": "k", "prefix": "p", "hash": "h", "scopes": ["a:b"]},
            expires_in_days=1,
        ),
        Id,
    ),
    (desks_repo.all_desks(), desks_repo.DeskRow),
    (desks_repo.desks_by_code(["D"]), desks_repo.DeskKey),
    (desks_repo.insert_desk("D", "Desk", "UTC", time(17)), desks_repo.DeskRow),
    (instruments_repo.instrument_by_symbol("S"), InstrumentOut),
    (instruments_repo.instruments_list(True), InstrumentOut),
    (instruments_repo.tick_sizes(["S"]), instruments_repo.TickSize),
    (clients_repo.client_by_id(SYSTEM, "C"), ClientOut),
    (clients_repo.clients_of(SYSTEM, "D"), ClientOut),
    (
        positions_repo.filtered_positions(
            SYSTEM, client_id="C", symbol="S", desk="D", open_only=True, after=(1, 2), limit=5
        ),
        positions_repo.ListedPosition,
    ),
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
            mismatches |= await composite_mismatches(connection, sql, into)
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
