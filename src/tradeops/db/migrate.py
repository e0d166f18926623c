"""Alembic driven from code, so `tradeops db …`, `make run` and the tests share one path."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import create_engine

from tradeops.db.urls import psycopg_url

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str, *, prepared_statements: bool = True) -> Config:
    """Alembic's configuration for `database_url`. Without `prepared_statements` (behind a
    pooler that cannot keep them, TRADEOPS_DB_PREPARED_STATEMENTS=false) psycopg never
    prepares: alembic's version UPDATE, run once per migration, would be prepared on one
    server connection by the fifth and looked for on another."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    url = psycopg_url(database_url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connect_args"] = {} if prepared_statements else {"prepare_threshold": None}
    return config


def upgrade(database_url: str, revision: str = "head", *, prepared_statements: bool = True) -> None:
    command.upgrade(alembic_config(database_url, prepared_statements=prepared_statements), revision)


def downgrade(database_url: str, revision: str, *, prepared_statements: bool = True) -> None:
    config = alembic_config(database_url, prepared_statements=prepared_statements)
    command.downgrade(config, revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(
        alembic_config("postgresql://localhost/x")
    ).get_current_head()


def current_revision(database_url: str) -> str | None:
    engine = create_engine(psycopg_url(database_url))
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def history() -> list[Script]:
    scripts = ScriptDirectory.from_config(alembic_config("postgresql://localhost/x"))
    return list(reversed(list(scripts.walk_revisions())))
