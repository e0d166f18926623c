"""The `tradeops` command: run the server, migrate, load demo data."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
import uvicorn
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from tradeops.audit import service as audit
from tradeops.auth import api_keys, users
from tradeops.auth.api_keys import ApiKeyCreate
from tradeops.auth.principal import SYSTEM
from tradeops.auth.users import UserCreate
from tradeops.db import migrate
from tradeops.db.embedded import resolve_database_url
from tradeops.db.pool import Database
from tradeops.db.uow import UnitOfWork, run_in_transaction
from tradeops.decimals import plain
from tradeops.demo import load_demo_data, load_demo_users
from tradeops.executions.simulation import SimulatedFill, simulate_fills
from tradeops.header_limits import HeaderLimitedHttpToolsProtocol
from tradeops.observability import configure_logging
from tradeops.settings import Settings, get_settings

T = TypeVar("T")
app = typer.Typer(
    help="tradeops: trade orders, maker-checker approval and audit on PostgreSQL.",
    pretty_exceptions_enable=False,
    no_args_is_help=True,
)
db_app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)
demo_app = typer.Typer(help="Demo data.", no_args_is_help=True)
users_app = typer.Typer(help="Users, roles and desks.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys for agents and services.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="api-keys")
app.add_typer(db_app, name="db")
app.add_typer(demo_app, name="demo")
console = Console()


def database_url(settings: Settings) -> str:
    """TRADEOPS_DATABASE_URL, or the embedded PostgreSQL under TRADEOPS_HOME when unset."""
    url = resolve_database_url(settings.database_url, settings.pgdata)
    if not settings.database_url:
        console.print(f"[dim]embedded PostgreSQL in {settings.pgdata.resolve()}[/dim]")
    return url


def run_as_system(settings: Settings, url: str, command: Callable[[UnitOfWork], Awaitable[T]]) -> T:
    async def run() -> T:
        db = Database(settings, url)
        try:
            return await run_in_transaction(db, SYSTEM, command)
        finally:
            await db.dispose()

    return asyncio.run(run())


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _serve(settings: Settings, url: str, host: str, port: int, workers: int) -> None:
    # Worker processes build their own app from the environment, so hand the URL on.
    os.environ["TRADEOPS_DATABASE_URL"] = url
    get_settings.cache_clear()
    # uvicorn shuts down gracefully, then re-raises the signal it caught. With Python's default
    # SIGTERM handler that would end the process at once, skipping the clean-up below and the
    # embedded PostgreSQL's stop at exit; raising SystemExit lets both run.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    uvicorn.run(
        "tradeops.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        # httptools has no cap on a request's headers: this protocol adds one (431).
        http=HeaderLimitedHttpToolsProtocol,
    )


@app.command()
def dev(
    host: Annotated[str | None, typer.Option(help="Default: TRADEOPS_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="Default: TRADEOPS_PORT")] = None,
) -> None:
    """Everything for a local try-out: database, migrations, demo data, server, one worker."""
    settings = get_settings()
    configure_logging(settings)
    url = database_url(settings)
    migrate.upgrade(url)
    _load_demo(settings, url)
    host, port = host or settings.host, port or settings.port
    console.print(f"[bold]tradeops[/bold] on http://{host}:{port}  (API docs: /docs)")
    # One job worker beside the server, on the same database; stopped when the server stops.
    job_worker = subprocess.Popen(
        [sys.executable, "-m", "tradeops.cli", "worker"],
        env={**os.environ, "TRADEOPS_DATABASE_URL": url},
    )
    try:
        _serve(settings, url, host, port, workers=1)
    finally:
        job_worker.terminate()
        try:
            job_worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            job_worker.kill()


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs run at once")] = 1,
) -> None:
    """Run background jobs (procrastinate) until stopped by SIGINT or SIGTERM."""
    from tradeops.jobs.app import run_worker

    settings = get_settings()
    configure_logging(settings)
    url = database_url(settings)
    console.print(f"[bold]tradeops worker[/bold] (concurrency {concurrency})")
    asyncio.run(run_worker(url, concurrency=concurrency, settings=settings))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Default: TRADEOPS_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="Default: TRADEOPS_PORT")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
) -> None:
    """Serve the API (run `tradeops db upgrade` first)."""
    settings = get_settings()
    configure_logging(settings)
    _serve(settings, database_url(settings), host or settings.host, port or settings.port, workers)


@app.command()
def mcp() -> None:
    """Serve the agent tools over MCP on stdin and stdout, for a desktop agent client.

    The agent's API key is read from TRADEOPS_API_KEY; logs go to stderr.
    """
    from tradeops.agents.stdio import KeyRefused, serve_stdio

    settings = get_settings()
    configure_logging(settings, stream=sys.stderr)
    key = os.environ.get("TRADEOPS_API_KEY", "")
    # Not database_url(): it prints on stdout, which is the protocol's.
    url = resolve_database_url(settings.database_url, settings.pgdata)
    try:
        asyncio.run(serve_stdio(settings, url, key))
    except KeyRefused as refused:
        Console(stderr=True).print(f"[red]{refused}[/red]")
        raise typer.Exit(2) from None


@db_app.command()
def upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Migrate the schema up to REVISION (default: head)."""
    migrate.upgrade(database_url(get_settings()), revision)
    console.print(f"database at {revision}")


@db_app.command()
def downgrade(revision: Annotated[str, typer.Argument(help="Target, e.g. base or -1")]) -> None:
    """Migrate the schema down to REVISION."""
    migrate.downgrade(database_url(get_settings()), revision)
    console.print(f"database at {revision}")


@db_app.command()
def current() -> None:
    """Show the schema revision of the database and the code's head."""
    url = database_url(get_settings())
    console.print(f"database: {migrate.current_revision(url)}  head: {migrate.head_revision()}")


@db_app.command()
def history() -> None:
    """List the migrations, oldest first."""
    table = Table("revision", "down", "message")
    for script in migrate.history():
        table.add_row(script.revision, str(script.down_revision), script.doc)
    console.print(table)


@demo_app.command("load")
def demo_load() -> None:
    """Load the demo desks, clients, instruments and their prices (idempotent)."""
    settings = get_settings()
    url = database_url(settings)
    _load_demo(settings, url)


def _load_demo(settings: Settings, url: str) -> None:
    password = settings.demo_password.get_secret_value() if settings.demo_password else None

    async def load(uow: UnitOfWork) -> tuple[dict[str, int], list[tuple[str, str]]]:
        return await load_demo_data(uow, SYSTEM), await load_demo_users(uow, SYSTEM, password)

    added, logins = run_as_system(settings, url, load)
    console.print(f"demo data: added {added}")
    if logins:
        table = Table("email", "password", title="demo logins (shown once)")
        for email, secret in logins:
            table.add_row(email, secret if not password else "(TRADEOPS_DEMO_PASSWORD)")
        console.print(table)


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option()],
    role: Annotated[str, typer.Option(help="trader, agent, approver, risk or admin")],
    desk: Annotated[list[str] | None, typer.Option(help="Desk code; repeat for several")] = None,
    name: Annotated[str | None, typer.Option()] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin")] = False,
) -> None:
    """Create a user. Without --password-stdin the user has no password (API keys only)."""
    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    data = UserCreate(
        email=email,
        name=name or email.split("@")[0],
        role=role,
        desks=desk or [],
        password=SecretStr(password) if password else None,
    )
    settings = get_settings()
    created = run_as_system(
        settings, database_url(settings), lambda uow: users.create_user(uow, SYSTEM, data)
    )
    console.print(
        f"created user {created.id} {created.email} ({created.role}) desks={created.desks}"
    )


@users_app.command("list")
def users_list() -> None:
    """List users with role, desks and whether they are active."""
    settings = get_settings()
    found = run_as_system(
        settings, database_url(settings), lambda uow: users.list_users(uow, SYSTEM)
    )
    table = Table("id", "email", "role", "desks", "active")
    for user in found:
        table.add_row(str(user.id), user.email, user.role, ",".join(user.desks), str(user.active))
    console.print(table)


@keys_app.command("create")
def api_keys_create(
    user: Annotated[str, typer.Option(help="Email of the key's owner")],
    name: Annotated[str, typer.Option()],
    scopes: Annotated[str, typer.Option(help="Comma-separated, e.g. orders:read,orders:write")],
    desks: Annotated[str | None, typer.Option(help="Comma-separated desk codes")] = None,
    expires_days: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Create an API key; the secret is printed alone on the last line, and only once."""
    data = ApiKeyCreate(
        name=name,
        scopes=[s.strip() for s in scopes.split(",") if s.strip()],
        desks=[d.strip() for d in desks.split(",")] if desks else None,
        expires_in_days=expires_days,
        owner_email=user,
    )
    settings = get_settings()
    created = run_as_system(
        settings, database_url(settings), lambda uow: api_keys.create_api_key(uow, SYSTEM, data)
    )
    console.print(
        f"API key {created.id} ({created.prefix}) for {created.owner_email}: {created.scopes}"
    )
    print(created.key)


@app.command("simulate-fills")
def fill_approved_orders() -> None:
    """Fill every approved order in full at its instrument's latest price (or its limit price
    when there is none), as the system, through the same service as a venue's fills (demos)."""
    settings = get_settings()
    url = database_url(settings)

    async def run() -> list[SimulatedFill]:
        db = Database(settings, url)
        try:
            return await simulate_fills(db, SYSTEM)
        finally:
            await db.dispose()

    fills = asyncio.run(run())
    table = Table("order", "client", "symbol", "side", "quantity", "price", "outcome")
    for fill in fills:
        price = plain(fill.price) if fill.price is not None else "-"
        table.add_row(
            str(fill.order_id),
            fill.client_id,
            fill.symbol,
            fill.side,
            plain(fill.quantity),
            price,
            fill.outcome,
        )
    console.print(table if fills else "no approved orders to fill")


@audit_app.command("verify")
def audit_verify() -> None:
    """Recompute every hash, chain and signed checkpoint; exit 1 at the first broken event."""
    settings = get_settings()
    key = settings.audit_key.get_secret_value().encode()
    report = run_as_system(
        settings, database_url(settings), lambda uow: audit.verify(uow, SYSTEM, key)
    )
    console.print_json(report.model_dump_json())
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint(
    settle_seconds: Annotated[float, typer.Option(help="Only sign events older than this")] = 0,
) -> None:
    """Sign the audit trail up to its newest settled event with TRADEOPS_AUDIT_KEY."""
    settings = get_settings()
    key = settings.audit_key.get_secret_value().encode()
    made = run_as_system(
        settings,
        database_url(settings),
        lambda uow: audit.create_checkpoint(uow, SYSTEM, key, settle_seconds=settle_seconds),
    )
    console.print(f"checkpoint up to event {made.upto_id}" if made else "nothing new to sign")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
