"""`tradeops --help` and every `tradeops <command> --help` import typer and the standard
library, not the database, web or job libraries: asking for help is instant, and each
`serve --workers N` process (which imports the command line first, before it can answer
uvicorn's health check) starts answering at once.

What is imported is checked in a fresh interpreter (deterministic); the import time is
measured with `python -X importtime`, the least noisy measure on a shared machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import get_args

import uvicorn

from tradeops.auth.users import PersonRole
from tradeops.cli import ROLES
from tradeops.serving import APP_FACTORY, uvicorn_options
from tradeops.settings import Settings

# Each costs from a tenth of a second to seconds to import; none is needed to print help.
# (typer itself imports pydantic to parse a command's options, so `tradeops <command> --help`
# does; `tradeops --help` does not.)
HEAVY = {
    "alembic",
    "asyncpg",
    "fastapi",
    "mcp",
    "procrastinate",
    "prometheus_client",
    "psycopg",
    "pydantic_settings",
    "sqlalchemy",
    "starlette",
    "structlog",
    "uvicorn",
}
HELP_REQUESTS = [
    ["--help"],
    ["serve", "--help"],
    ["dev", "--help"],
    ["worker", "--help"],
    ["mcp", "--help"],
    ["simulate-fills", "--help"],
    ["db", "--help"],
    ["db", "upgrade", "--help"],
    ["demo", "load", "--help"],
    ["users", "create", "--help"],
    ["users", "list", "--help"],
    ["api-keys", "create", "--help"],
    ["audit", "verify", "--help"],
]
IMPORT_TIME_BUDGET_US = 500_000  # the bound for `tradeops --help`


def top_level_modules_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return {name.split(".")[0] for name in json.loads(result.stdout.splitlines()[-1])}


def test_help_of_every_command_imports_no_database_web_or_job_library() -> None:
    run_each = "\n".join(
        [
            "from tradeops.cli import app",
            f"for args in {HELP_REQUESTS!r}:",
            "    try:",
            "        app(args=args)",
            "    except SystemExit as stop:",
            "        assert stop.code == 0, (args, stop.code)",
        ]
    )
    assert top_level_modules_after(run_each) & HEAVY == set()


def test_the_console_script_help_imports_none_of_them() -> None:
    # As the installed `tradeops` script starts: `from tradeops.cli import main`.
    code = "import sys\nsys.argv = ['tradeops', '--help']\nfrom tradeops.cli import main\n"
    code += "try:\n    main()\nexcept SystemExit:\n    pass"
    # Nor pydantic, nor rich: the help is plain text.
    assert top_level_modules_after(code) & (HEAVY | {"pydantic", "rich"}) == set()


def cumulative_import_us(module: str) -> int:
    """`module`'s cumulative import time in microseconds, as `python -X importtime` says."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for line in result.stderr.splitlines():
        _, _, cumulative, name = (part.strip() for part in line.replace("|", ":", 2).split(":"))
        if name == module:
            return int(cumulative)
    raise AssertionError(f"{module} not in the importtime output")


def test_importing_the_command_line_takes_well_under_half_a_second() -> None:
    # The best of five: colleagues' processes on a shared machine only ever add time.
    best = min(cumulative_import_us("tradeops.cli") for _ in range(5))
    assert best < IMPORT_TIME_BUDGET_US, f"import tradeops.cli took {best} us"


def test_the_roles_offered_are_the_roles_a_person_may_have() -> None:
    assert get_args(PersonRole) == ROLES


def test_serve_hands_the_health_check_timeout_to_uvicorn() -> None:
    settings = Settings(serve_healthcheck_timeout_seconds=45, _env_file=None)  # type: ignore[call-arg]
    config = uvicorn.Config(APP_FACTORY, **uvicorn_options(settings, "127.0.0.1", 8000))  # type: ignore[arg-type]
    assert config.timeout_worker_healthcheck == 45
