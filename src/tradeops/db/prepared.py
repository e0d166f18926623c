"""Statements rendered once for asyncpg, for the hot paths.

SQLAlchemy builds and documents the statement; rendering it at import and sending it
straight to asyncpg skips per-request compilation, cache-key building and result
processing, which measured as most of a simple request's cost (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.sql import ClauseElement

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class Prepared:
    sql: str
    names: tuple[str, ...]

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


def prepare(statement: ClauseElement) -> Prepared:
    compiled = statement.compile(dialect=_DIALECT)
    return Prepared(str(compiled), tuple(getattr(compiled, "positiontup", None) or ()))
