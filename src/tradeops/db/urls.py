"""One database URL, spelled for each driver that needs it."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url


def _with_driver(url: str, driver: str) -> URL:
    parsed = make_url(url)
    return parsed.set(drivername=f"postgresql+{driver}")


def asyncpg_url(url: str) -> URL:
    """The URL for a SQLAlchemy async engine on asyncpg (tests arrange data through one)."""
    return _with_driver(url, "asyncpg")


def psycopg_url(url: str) -> URL:
    """The URL for migrations and the job worker (psycopg 3, synchronous)."""
    return _with_driver(url, "psycopg")


def libpq_url(url: str) -> str:
    """A plain postgresql:// URL as libpq, asyncpg and psql understand it."""
    return (
        _with_driver(url, "asyncpg")
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )


def with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)
