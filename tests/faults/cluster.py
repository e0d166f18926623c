"""A PostgreSQL cluster of the fault suite's own (initdb + pg_ctl in a temp dir, a free port),
and the tradeops processes on it, each ended only by the pid this module started.

The suite kills the postmaster with SIGKILL, so it must never point at a shared server. As
root (CI), PostgreSQL refuses to run, so its commands run as the `postgres` system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg


def _postgres_bin() -> Path:
    """TRADEOPS_PG_BIN, else Debian's newest /usr/lib/postgresql/N/bin."""
    configured = os.environ.get("TRADEOPS_PG_BIN")
    if configured:
        return Path(configured)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _postgres_bin()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as() -> str | None:
    """PostgreSQL will not run as root: use its system user then, else ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root with no postgres or nobody user to run PostgreSQL as")


@dataclass
class LocalPostgres:
    """One cluster under `root`: data directory, socket directory and server log."""

    root: Path
    port: int = field(default_factory=free_port)
    user: str | None = field(default_factory=_run_as)
    # More `-c name=value` server settings, e.g. ("shared_preload_libraries=pg_stat_statements",)
    settings: tuple[str, ...] = ()

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _pg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(PG_BIN / args[0]), *args[1:]],
            user=self.user,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr}{done.stdout}")
        return done

    def _make_root(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"no PostgreSQL binaries in {PG_BIN} (set TRADEOPS_PG_BIN)")
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            shutil.chown(self.root, self.user)
            # The temp dir above is root's and private: let the server's user through.
            self.root.parent.chmod(0o755)

    def init(self) -> None:
        self._make_root()
        self._pg(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-sync", "--locale=C",
        )  # fmt: skip

    def standby_of(self, primary: LocalPostgres) -> None:
        """Make this cluster a streaming replica of `primary` (running): `pg_basebackup -R`
        copies it and writes standby.signal and primary_conninfo (initdb's trust rules
        allow replication connections from 127.0.0.1)."""
        self._make_root()
        self._pg(
            "pg_basebackup", "-D", str(self.data), "-R", "-X", "stream", "-c", "fast",
            "--no-sync", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
        )  # fmt: skip

    def start(self) -> None:
        """Ask pg_ctl to start the server; `wait_accepting` says when it takes connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
            " -c max_connections=200 -c shared_buffers=64MB"
        ) + "".join(f" -c {setting}" for setting in self.settings)
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "start", "-W")

    def accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.url(), connect_timeout=1) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    def wait_accepting(self, timeout: float = 60.0) -> float:
        """Poll every 50 ms until the server takes connections; return that moment (monotonic).

        A restart right after a SIGKILL can fail while the old backends still hold the
        shared memory; such a start is simply asked again."""
        deadline = time.monotonic() + timeout
        next_start = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            if self.accepts_connections():
                return time.monotonic()
            if time.monotonic() > next_start and self.postmaster_pid() is None:
                self.start()
                next_start = time.monotonic() + 3.0
            time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL did not accept connections in {timeout} s; see {self.log}")

    def postmaster_pid(self) -> int | None:
        """The pid in postmaster.pid, if that process is alive."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def kill_postmaster(self) -> int:
        """SIGKILL the postmaster (not its backends: they notice and exit on their own)."""
        pid = self.postmaster_pid()
        if pid is None:
            raise RuntimeError("no postmaster to kill")
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        if self.postmaster_pid() is not None:
            self._pg("pg_ctl", "-D", str(self.data), "stop", "-m", "immediate", check=False)


@dataclass
class Process:
    """A `tradeops` command run as a child process, its output in a log file."""

    args: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts}: {' '.join(self.args)}\n".encode())
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "tradeops.cli", *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, no clean-up of any kind."""
        assert self.popen is not None
        self.popen.kill()
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""
