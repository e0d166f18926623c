"""Statements rendered for asyncpg: SQLAlchemy builds them, asyncpg runs them.

Constant statements are rendered once, at import; statements built per call (filters,
inserts with values) are rendered when run, with the values SQLAlchemy bound into them.
`prepare` serves both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.sql import ClauseElement

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Prepared:
    sql: str
    names: tuple[str, ...]
    bound: Mapping[str, Any] = field(default_factory=dict)

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[n] if n in params else self.bound[n] for n in self.names]

    def written_with(self, value: Callable[[str], str]) -> str:
        """The statement with each parameter written as `value` names it: as a database
        function runs it, with its own variables and arguments (the one-statement writes)."""
        values = [value(name) for name in self.names]
        return re.sub(r"\$(\d+)", lambda m: values[int(m.group(1)) - 1], self.sql)


def written_into(sql: str, at: str, written: str) -> str:
    """`sql` (a statement as a database function runs it, Prepared.written_with) with its one
    `at` written as `written`: the INTO that reads its row into the function's variables."""
    if sql.count(at) != 1:
        raise ValueError(f"expected one {at!r} in {sql}")
    return sql.replace(at, written)


def _render(statement: ClauseElement) -> Prepared:
    compiled = statement.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
    processors = getattr(compiled, "_bind_processors", {})
    bound = {
        name: processors[name](value) if name in processors and value is not None else value
        for name, value in compiled.params.items()
    }
    return Prepared(str(compiled), tuple(getattr(compiled, "positiontup", None) or ()), bound)


def prepare(statement: ClauseElement | str) -> Prepared:
    """Render a constant statement once (plain SQL strings use :name parameters)."""
    return _render(text(statement) if isinstance(statement, str) else statement)


@dataclass(frozen=True, slots=True)
class Query(Generic[T]):
    """A statement and the type of its rows: a frozen dataclass (or a pydantic model) whose
    fields are the statement's columns, by name. `tests/integration/test_queries.py`
    prepares every one against the migrated schema and compares the two."""

    prepared: Prepared
    into: type[T]
    alone: bool = False  # sent alone, outside a transaction: db.uow.one_statement


@dataclass(frozen=True, slots=True)
class Id:
    """A row of one key: what an INSERT or UPDATE … RETURNING id answers."""

    id: int


def as_row(value: T | Mapping[str, Any] | None, into: type[T]) -> T | None:
    """A composite value a statement answered (asyncpg gives a Record) as `into`, made once;
    None stays None, and a value already of the type is kept."""
    if value is None or isinstance(value, into):
        return value
    return into(**cast(Mapping[str, Any], value))


# Every typed query built at import, for the test that checks columns against types.
QUERIES: list[Query[Any]] = []


def query(statement: ClauseElement | str, into: type[T], *, alone: bool = False) -> Query[T]:
    """A constant statement whose rows are `into`; rendered once, registered for the test.
    `alone`: sent outside a transaction (db.uow.one_statement), prepared at connect."""
    typed = Query(prepare(statement), into, alone)
    QUERIES.append(typed)
    return typed


def sent_alone() -> list[Prepared]:
    """The typed queries sent alone (db.uow.one_statement), which a new connection prepares
    before its first use, in a transaction of its own (db.pool): asyncpg looks up the types of
    a statement's composite values once per connection, in three statements (`jit` off, the
    look-up, `jit` back), which outside a transaction a pooler in transaction mode spreads
    over server connections: the look-up then runs with JIT on (seconds, past the statement
    timeout) and `jit = off` stays on a server connection another client gets next."""
    return [typed.prepared for typed in QUERIES if typed.alone]
