"""The migrations own the schema: up, down to base, up again, and no drift from the models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import CheckConstraint, Connection, Table, create_engine, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.naming import conv

from tests.conftest import create_database, drop_database
from tradeops.db import migrate
from tradeops.db.base import NAMING_CONVENTION
from tradeops.db.urls import psycopg_url
from tradeops.migrations.env_options import include_object
from tradeops.migrations.schema import Base


def schema_drift(url: str) -> list[object]:
    engine = create_engine(psycopg_url(url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "include_object": include_object}
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_and_no_drift(postgres_server_url: str) -> None:
    url = create_database(postgres_server_url, prefix="tradeops_migrations")
    try:
        migrate.upgrade(url)
        assert migrate.current_revision(url) == migrate.head_revision()
        migrate.downgrade(url, "base")
        assert migrate.current_revision(url) is None
        migrate.upgrade(url)
        assert migrate.current_revision(url) == migrate.head_revision()
        assert schema_drift(url) == []
    finally:
        drop_database(postgres_server_url, url)


def test_the_models_check_constraints_are_the_migrations(database_url: str) -> None:
    """Alembic compares no CHECK constraint, so a model could say one rule while the database
    keeps another. PostgreSQL writes both out (pg_get_constraintdef): the migrated table's,
    and the model's added to a bare copy of it."""
    assert tables_differing(database_url, check_constraints, model_check_constraints) == {}


def test_the_models_partial_indexes_are_the_migrations(database_url: str) -> None:
    """Alembic compares no index's WHERE clause either: PostgreSQL writes out each partial
    index's predicate (pg_get_expr), the migrated table's and the model's (built on a bare
    copy of the table)."""
    assert tables_differing(database_url, index_predicates, model_index_predicates) == {}


def tables_differing(
    database_url: str,
    installed: Callable[[Connection, str], dict[str, Any]],
    modelled: Callable[[Connection, Table], dict[str, Any]],
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each table whose `installed` rules (as the migrations made them) are not its
    `modelled` ones, with both; the probes made meanwhile rolled back."""
    engine = create_engine(psycopg_url(database_url))
    try:
        with engine.connect() as connection:
            differ = {
                table.name: (ours, model)
                for table in Base.metadata.sorted_tables
                if (ours := installed(connection, table.name))
                != (model := modelled(connection, table))
            }
            connection.rollback()
    finally:
        engine.dispose()
    return differ


PREDICATES = text(
    "SELECT c.relname, i.indisunique, pg_get_expr(i.indpred, i.indrelid)"
    " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
    " WHERE i.indrelid = CAST(:table AS regclass) AND i.indpred IS NOT NULL"
)


def index_predicates(connection: Connection, table: str, prefix: str = "") -> dict[str, object]:
    rows = connection.execute(PREDICATES, {"table": table}).all()
    return {name.removeprefix(prefix): (unique, where) for name, unique, where in rows}


def model_index_predicates(connection: Connection, table: Table) -> dict[str, object]:
    """The model's partial indexes as PostgreSQL writes them out, from a bare copy of the
    table in this transaction (each named as in the model, after the copy's name)."""
    probe = f"probe_{table.name}"
    connection.execute(text(f'CREATE TEMP TABLE "{probe}" (LIKE "{table.name}")'))
    for index in table.indexes:
        where = index.dialect_options["postgresql"]["where"]
        if where is not None:
            columns = ", ".join(f'"{column.name}"' for column in index.columns)
            predicate = where.compile(dialect=postgresql.dialect())
            unique = "UNIQUE " if index.unique else ""
            connection.execute(
                text(
                    f'CREATE {unique}INDEX "{probe}_{index.name}" ON "{probe}" ({columns})'
                    f" WHERE {predicate}"
                )
            )
    return index_predicates(connection, probe, prefix=f"{probe}_")


CHECKS = text(
    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
    " WHERE conrelid = CAST(:table AS regclass) AND contype = 'c'"
)


def check_constraints(connection: Connection, table: str) -> dict[str, str]:
    return dict(connection.execute(CHECKS, {"table": table}).all())


def model_check_constraints(connection: Connection, table: Table) -> dict[str, str]:
    """The model's CHECK constraints as PostgreSQL writes them out, from a bare copy of the
    table (its columns only) in this transaction."""
    probe = f"probe_{table.name}"
    connection.execute(text(f'CREATE TEMP TABLE "{probe}" (LIKE "{table.name}")'))
    for constraint in table.constraints:
        if isinstance(constraint, CheckConstraint):
            name = constraint_name(table, constraint)
            sql = constraint.sqltext.compile(dialect=postgresql.dialect())
            connection.execute(text(f'ALTER TABLE "{probe}" ADD CONSTRAINT "{name}" CHECK ({sql})'))
    return check_constraints(connection, probe)


def constraint_name(table: Table, constraint: CheckConstraint) -> str:
    if isinstance(constraint.name, conv):  # named in full
        return str(constraint.name)
    return NAMING_CONVENTION["ck"] % {"table_name": table.name, "constraint_name": constraint.name}
