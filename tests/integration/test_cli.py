"""The `tradeops` command as a newcomer meets it, run as a real process on the test database.

A mistake is one line on stderr saying what is wrong and what is valid (exit 2 for a wrong
command line, 1 for a refused operation), never a traceback unless --debug asks for one; the
demo password can be shown again at any time; `make run`'s banner comes last.
"""

from __future__ import annotations

import os
import queue
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tradeops.cli import render_banner

API = "/api/v1"
TRADEOPS = str(Path(sys.executable).with_name("tradeops"))  # the installed console script
DEMO_EMAILS = [
    "trader@demo.test",
    "trader.fi@demo.test",
    "approver@demo.test",
    "approver2@demo.test",
    "risk@demo.test",
    "admin@demo.test",
]


def cli_env(database_url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEOPS_")}
    return {
        **env,
        "TRADEOPS_DATABASE_URL": database_url,
        "TRADEOPS_HOME": str(home),
        "TRADEOPS_ENV": "test",
        **extra,
    }


def tradeops(
    database_url: str, home: Path, *args: str, stdin: str = "", **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TRADEOPS, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=cli_env(database_url, home, **extra),
        timeout=90,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command may print on stderr."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tradeops: ")
    return lines[0]


async def sign_in(client: httpx.AsyncClient, email: str, password: str) -> int:
    response = await client.post(
        f"{API}/auth/token", data={"username": email, "password": password}
    )
    return response.status_code


AGENT_KEY = ["api-keys", "create", "--user", "agent@demo.test", "--name", "k"]
MISTAKES = [
    # (arguments, exit code, what the line must name)
    (
        ["users", "create", "--email", "trader@demo.test", "--role", "trader"],
        1,
        ["trader@demo.test", "already exists", "users list"],
    ),
    (
        ["users", "create", "--email", "new@demo.test", "--role", "boss"],
        2,
        ["'boss'", "trader, agent, approver, risk, admin"],
    ),
    (
        ["users", "create", "--email", "new@demo.test", "--role", "trader", "--desk", "NOPE"],
        2,
        ["NOPE", "known desks: EQ-US, FI-EU"],
    ),
    (
        [
            "api-keys",
            "create",
            "--user",
            "nobody@demo.test",
            "--name",
            "k",
            "--scopes",
            "orders:read",
        ],
        2,
        ["unknown user nobody@demo.test", "users list"],
    ),
    (
        [
            "api-keys",
            "create",
            "--user",
            "agent@demo.test",
            "--name",
            "k",
            "--scopes",
            "orders:fly",
        ],
        2,
        ["orders:fly", "valid scopes:", "orders:read", "orders:write", "positions:read"],
    ),
    (
        [*AGENT_KEY, "--scopes", "orders:read", "--desks", "XX-YY"],
        2,
        ["XX-YY", "known desks: EQ-US, FI-EU"],
    ),
    (
        ["users", "set-password", "--email", "nobody@demo.test"],
        2,
        ["nobody@demo.test"],
    ),
]


@pytest.mark.slow
def test_each_mistake_is_one_line_on_stderr_with_what_is_valid(
    database_url: str, tmp_path: Path
) -> None:
    loaded = tradeops(database_url, tmp_path, "demo", "load")
    assert loaded.returncode == 0, loaded.stderr
    for args, code, named in MISTAKES:
        result = tradeops(database_url, tmp_path, *args, stdin="a-long-enough-password\n")
        line = one_line(result)
        assert result.returncode == code, (args, line)
        for part in named:
            assert part in line, (args, line)


def test_debug_shows_the_traceback(database_url: str, tmp_path: Path) -> None:
    wrong = ["users", "create", "--email", "new@demo.test", "--role", "boss"]
    quiet = tradeops(database_url, tmp_path, *wrong)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    for place in (["--debug", *wrong], [*wrong, "--debug"]):
        loud = tradeops(database_url, tmp_path, *place)
        assert loud.returncode != 0
        assert "Traceback" in loud.stderr and "valid roles" in loud.stderr


async def test_set_password_reads_stdin_and_the_new_password_signs_in(
    client: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    assert tradeops(database_url, tmp_path, "demo", "load").returncode == 0
    changed = tradeops(
        database_url,
        tmp_path,
        "users",
        "set-password",
        "--email",
        "approver@demo.test",
        stdin="brand-new-password-1\n",
    )
    assert changed.returncode == 0, changed.stderr
    assert "brand-new-password-1" not in changed.stdout + changed.stderr
    assert await sign_in(client, "approver@demo.test", "brand-new-password-1") == 200

    short = tradeops(
        database_url,
        tmp_path,
        "users",
        "set-password",
        "--email",
        "approver@demo.test",
        stdin="short\n",
    )
    assert short.returncode == 2 and "at least 12" in one_line(short)
    agent = tradeops(
        database_url,
        tmp_path,
        "users",
        "set-password",
        "--email",
        "agent@demo.test",
        stdin="agents-have-no-password\n",
    )
    assert agent.returncode == 2 and "API keys" in one_line(agent)


async def test_demo_logins_show_the_password_again_and_it_signs_in(
    client: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    before = tradeops(database_url, tmp_path, "demo", "logins")
    assert before.returncode == 1 and "demo load" in one_line(before)

    first = tradeops(database_url, tmp_path, "demo", "load")
    assert first.returncode == 0, first.stderr
    assert "demo data: added 2 desks, 3 clients, 7 instruments, 7 prices, 2 risk limits" in (
        first.stdout
    )
    assert "{" not in first.stdout, "the summary is words, not a dict"
    password = tradeops(database_url, tmp_path, "demo", "password").stdout.strip()
    assert len(password) >= 12
    stored = tmp_path / "demo-password"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600, "readable by its owner only"

    logins = tradeops(database_url, tmp_path, "demo", "logins")
    assert logins.returncode == 0, logins.stderr
    for email in DEMO_EMAILS:
        assert email in logins.stdout
    assert f"export TRADEOPS_DEMO_PASSWORD={password}" in logins.stdout.splitlines()
    for email in DEMO_EMAILS:
        assert await sign_in(client, email, password) == 200, email

    again = tradeops(database_url, tmp_path, "demo", "load")
    assert "nothing new" in again.stdout
    assert tradeops(database_url, tmp_path, "demo", "password").stdout.strip() == password


async def test_a_demo_password_chosen_after_the_first_run_still_signs_in(
    client: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    """The old trap: users made on the first run kept its password, whatever was set later."""
    assert tradeops(database_url, tmp_path, "demo", "load").returncode == 0
    chosen = "chosen-later-password"
    rerun = tradeops(database_url, tmp_path, "demo", "load", TRADEOPS_DEMO_PASSWORD=chosen)
    assert rerun.returncode == 0, rerun.stderr
    assert await sign_in(client, "trader@demo.test", chosen) == 200
    assert tradeops(database_url, tmp_path, "demo", "password").stdout.strip() == chosen

    # A demo user whose password was changed gets the demo password back on request.
    tradeops(
        database_url,
        tmp_path,
        "users",
        "set-password",
        "--email",
        "trader@demo.test",
        stdin="someone-elses-password\n",
    )
    assert tradeops(database_url, tmp_path, "demo", "load", "--reset-passwords").returncode == 0
    assert await sign_in(client, "trader@demo.test", chosen) == 200


def test_no_demo_logins_in_production(database_url: str, tmp_path: Path) -> None:
    keys = {"TRADEOPS_SECRET_KEY": "s" * 40, "TRADEOPS_AUDIT_KEY": "a" * 40}
    refused = tradeops(database_url, tmp_path, "demo", "load", TRADEOPS_ENV="prod", **keys)
    assert refused.returncode == 1 and "prod" in one_line(refused)
    assert not (tmp_path / "demo-password").exists()


def _listening_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize("command", ["serve", "dev"])
def test_a_port_in_use_is_one_line_naming_the_setting(
    command: str, database_url: str, tmp_path: Path
) -> None:
    with _listening_port() as taken:
        port = str(taken.getsockname()[1])
        result = tradeops(database_url, tmp_path, command, "--port", port)
    line = one_line(result)
    assert result.returncode == 1
    assert port in line and "TRADEOPS_PORT" in line and "--port" in line


def test_banner_names_the_urls_logins_and_the_export_line(tmp_path: Path) -> None:
    banner = render_banner("127.0.0.1", 8000, "pass-word-1234", tmp_path)
    for part in [
        "http://127.0.0.1:8000",
        "http://127.0.0.1:8000/docs",
        "http://127.0.0.1:8000/ui",
        "tradeops demo logins",
        *DEMO_EMAILS,
    ]:
        assert part in banner
    assert "  for the tour    export TRADEOPS_DEMO_PASSWORD=pass-word-1234" in banner.splitlines()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_dev_prints_the_banner_last_and_keeps_chatter_in_log_files(
    database_url: str, tmp_path: Path
) -> None:
    port = _free_port()
    env = cli_env(database_url, tmp_path, PYTHONUNBUFFERED="1", TRADEOPS_LOG_FORMAT="console")
    server = subprocess.Popen(
        [TRADEOPS, "dev", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert server.stdout is not None
    threading.Thread(target=lambda: [lines.put(x) for x in server.stdout], daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not any(line.startswith("  for the tour") for line in seen):
            assert time.monotonic() < deadline and server.poll() is None, "".join(seen)
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                continue
        time.sleep(1)  # anything the server still had to say at start-up
        while not lines.empty():
            seen.append(lines.get())
        with httpx.Client() as http:
            assert http.get(f"http://127.0.0.1:{port}/health/live").status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    output = "".join(seen)
    banner_at = output.index("tradeops is running on")
    assert "Application startup complete" in output[:banner_at], "uvicorn's lines come first"
    after = output[banner_at:].splitlines()
    assert after[-2].startswith("  logs"), "nothing follows the banner"
    password = (tmp_path / "demo-password").read_text().strip()
    assert f"  for the tour    export TRADEOPS_DEMO_PASSWORD={password}" in after
    assert "demo data: added 2 desks" in output
    assert "Running upgrade" not in output, "migrations are logged to a file"
    assert "alembic" in (tmp_path / "logs" / "database.log").read_text()
    assert (tmp_path / "logs" / "worker.log").exists()
