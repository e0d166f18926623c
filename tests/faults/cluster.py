"""A PostgreSQL cluster of the fault suite's own (initdb + pg_ctl in a temp dir, a free port),
and the tradeops processes on it, each ended only by the pid this module started.

The suite kills the postmaster with SIGKILL, so it must never point at a shared server. As
root (CI), PostgreSQL refuses to run, so its commands run as the `postgres` system user.
"""

from __future__ import annotations

import os
import pwd
import random
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
    """A free local port: in TRADEOPS_FAULTS_PORTS (`low-high`) when set, so that suites
    sharing a machine keep to their own ranges; else any the system gives."""
    ports = os.environ.get("TRADEOPS_FAULTS_PORTS")
    candidates = [0]
    if ports:
        low, high = (int(end) for end in ports.split("-"))
        candidates = random.sample(range(low, high + 1), high - low + 1)
    for candidate in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port: int = sock.getsockname()[1]
            return port
    raise RuntimeError(f"no free port in TRADEOPS_FAULTS_PORTS={ports}")


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


def end(popen: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM a child we started, SIGKILL it if it is still there after 15 s."""
    if popen is None or popen.poll() is not None:
        return
    popen.terminate()
    try:
        popen.wait(timeout=15)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout=10)


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
        end(self.popen)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


TOOLS = Path(__file__).resolve().parents[2] / ".tools"


def pgbouncer_binaries() -> list[Path]:
    """Every pgbouncer at hand: Debian's package (`make pgbouncer`) and those `make
    pgbouncer-new` built from Debian's newer source into .tools/pgbouncer-<version>/."""
    packaged = Path(shutil.which("pgbouncer") or "/usr/sbin/pgbouncer")
    built = sorted(TOOLS.glob("pgbouncer-*/bin/pgbouncer"))
    return [binary for binary in [packaged, *built] if binary.exists()]


def pgbouncer_binary(at_least: tuple[int, int] = (0, 0)) -> Path | None:
    """The oldest pgbouncer at hand that is at least `at_least`: the pre-1.21 set-up runs on
    Debian 12's own 1.18 even when a newer one is built."""
    found = [(pgbouncer_version(binary), binary) for binary in pgbouncer_binaries()]
    recent = sorted((version, binary) for version, binary in found if version >= at_least)
    return recent[0][1] if recent else None


def pgbouncer_version(binary: Path) -> tuple[int, int]:
    """(1, 18) from `PgBouncer 1.18.0`."""
    first = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout
    major, minor = first.split()[1].split(".")[:2]
    return int(major), int(minor)


@dataclass
class PgBouncer:
    """PgBouncer in transaction mode in front of one PostgreSQL port, a process of our own
    with its ini under `root` (never the system service), ended by the pid it started.

    `max_prepared_statements` = 0 is PgBouncer before 1.21 (no prepared statements across
    transactions); it is written to the ini only when set, as older versions refuse it."""

    root: Path
    binary: Path
    upstream_port: int
    max_prepared_statements: int = 0
    port: int = field(default_factory=free_port)
    user: str | None = field(default_factory=_run_as)  # it, too, refuses to run as root
    popen: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "pgbouncer.log"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _ini(self) -> str:
        prepared = self.max_prepared_statements
        return "\n".join(
            [
                "[databases]",
                f"* = host=127.0.0.1 port={self.upstream_port}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {self.root / 'users.txt'}",
                "pool_mode = transaction",
                "max_client_conn = 1000",
                "default_pool_size = 20",
                "admin_users = postgres",
                *([f"max_prepared_statements = {prepared}"] if prepared else []),
                "",
            ]
        )

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "users.txt").write_text('"postgres" ""\n')
        ini = self.root / "pgbouncer.ini"
        ini.write_text(self._ini())
        if self.user is not None:
            for path in (self.root, ini, self.root / "users.txt"):
                shutil.chown(path, self.user)
            self.root.parent.chmod(0o755)
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [str(self.binary), str(ini)], user=self.user, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while not self._accepts():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not start:\n{self.log.read_text()}")
            time.sleep(0.1)

    def _accepts(self) -> bool:
        try:
            with psycopg.connect(self.url("pgbouncer"), connect_timeout=1, autocommit=True):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        end(self.popen)
