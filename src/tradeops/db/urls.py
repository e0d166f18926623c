"""One database URL, spelled for each driver that needs it.

A URL may name several hosts, as libpq allows, for a failover pair:
`postgresql://user@db1:5432,db2:5432/tradeops?target_session_attrs=read-write` connects to
whichever of them takes writes now. asyncpg and psycopg (libpq) read that form as it is;
SQLAlchemy wants the hosts as repeated `host` query parameters instead
(`postgresql+psycopg://user@/tradeops?host=db1:5432&host=db2:5432&...`), which its psycopg and
asyncpg dialects pass on to the driver.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from sqlalchemy.engine import URL, make_url


def _hosts(url: str) -> list[str] | None:
    """The `host:port` entries of a multi-host URL; None for a URL with one host (or none)."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    return netloc.split(",") if "," in netloc else None


def _parsed(url: str) -> URL:
    """SQLAlchemy's URL for `url`, its hosts moved into `host` query parameters if several."""
    hosts = _hosts(url)
    if hosts is None:
        return make_url(url)
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    username, _, password = userinfo.partition(":")
    query: dict[str, list[str]] = {"host": hosts}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        query.setdefault(name, []).append(value)
    return URL.create(
        drivername=parts.scheme,
        username=unquote(username) or None,
        password=unquote(password) or None,
        database=unquote(parts.path.lstrip("/")) or None,
        query={name: _one_or_all(values) for name, values in query.items()},
    )


def _one_or_all(values: list[str]) -> str | tuple[str, ...]:
    return values[0] if len(values) == 1 else tuple(values)


def _with_driver(url: str, driver: str) -> URL:
    return _parsed(url).set(drivername=f"postgresql+{driver}")


def asyncpg_url(url: str) -> URL:
    """The URL for a SQLAlchemy async engine on asyncpg (tests arrange data through one)."""
    return _with_driver(url, "asyncpg")


def psycopg_url(url: str) -> URL:
    """The URL for migrations and the job worker (psycopg 3, synchronous)."""
    return _with_driver(url, "psycopg")


def libpq_url(url: str) -> str:
    """A plain postgresql:// URL as libpq, asyncpg and psql understand it (several hosts kept
    in libpq's own `host1:port1,host2:port2` form)."""
    if _hosts(url) is not None:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(scheme="postgresql"))
    return (
        _with_driver(url, "asyncpg")
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )


def with_database(url: str, database: str) -> str:
    if _hosts(url) is not None:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path=f"/{database}"))
    return make_url(url).set(database=database).render_as_string(hide_password=False)
