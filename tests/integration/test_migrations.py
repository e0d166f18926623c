"""The migrations own the schema: up, down to base, up again, and no drift from the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from tests.conftest import create_database, drop_database
from tradeops.db import migrate
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
