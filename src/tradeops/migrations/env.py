"""Alembic environment: runs migrations as the database owner over psycopg (synchronous)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from tradeops.migrations.env_options import include_object
from tradeops.migrations.schema import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = create_engine(
        config.get_main_option("sqlalchemy.url") or "",
        poolclass=pool.NullPool,
        connect_args=config.attributes.get("connect_args", {}),
    )
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        include_object=include_object,
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
