"""The fault suite's stack: its own PostgreSQL cluster, migrated, with the demo data, a trader,
an approver, an admin and an agent key, and `tradeops serve` and `tradeops worker` as child
processes.

Run with `make faults` (pytest -m faults); the default `make test` leaves it out, because it
kills processes and takes minutes. Everything it starts lives under one temp dir and is ended
by the pid it started.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.faults.cluster import LocalPostgres, Process, free_port
from tradeops.auth import api_keys
from tradeops.auth.api_keys import ApiKeyCreate
from tradeops.auth.principal import SYSTEM
from tradeops.cli import run_as_system
from tradeops.db import migrate
from tradeops.db.embedded import ensure_database
from tradeops.db.uow import UnitOfWork
from tradeops.demo import load_demo_data, load_demo_users
from tradeops.settings import Settings

ROOT = Path(__file__).resolve().parent.parent.parent
FIGURES_DIR = ROOT / ".tradeops" / "faults"
PASSWORD = "fault-suite-password-0001"
AGENT_SCOPES = "orders:read,orders:write,orders:review,clients:read,reference:read,positions:read"


@dataclass
class Stack:
    pg: LocalPostgres
    database_url: str
    api: Process
    worker: Process
    base_url: str
    trader: str  # JWT of trader@demo.test (EQ-US)
    approver: str  # JWT of approver@demo.test (EQ-US)
    admin: str  # JWT of admin@demo.test (webhooks, executions, market data)
    agent_key: str  # API key of agent@demo.test (EQ-US)
    workdir: Path

    def headers(self, credential: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {credential}"}


def _arrange_data(url: str) -> str:
    """Demo data and users (password PASSWORD) and an agent key; return the key."""
    settings = Settings(env="test", _env_file=None)  # type: ignore[call-arg]

    async def load(uow: UnitOfWork) -> str:
        await load_demo_data(uow, SYSTEM)
        await load_demo_users(uow, SYSTEM, PASSWORD)
        data = ApiKeyCreate(
            name="fault suite",
            scopes=AGENT_SCOPES.split(","),
            desks=None,
            owner_email="agent@demo.test",
        )
        created = await api_keys.create_api_key(uow, SYSTEM, data)
        return created.key

    return run_as_system(settings, url, load)


def _wait_ready(base_url: str, api: Process, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not api.alive():
            raise RuntimeError(f"tradeops serve exited:\n{api.tail()}")
        try:
            answer = httpx.get(f"{base_url}/health/ready", timeout=2)
        except httpx.TransportError as error:
            last = repr(error)
        else:
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text}"
        time.sleep(0.2)
    raise RuntimeError(f"tradeops serve not ready in {timeout} s ({last}):\n{api.tail()}")


def _token(base_url: str, email: str) -> str:
    answer = httpx.post(
        f"{base_url}/api/v1/auth/token",
        data={"username": email, "password": PASSWORD},
        timeout=30,
    )
    assert answer.status_code == 200, f"sign-in of {email}: {answer.status_code} {answer.text}"
    token: str = answer.json()["access_token"]
    return token


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="tradeops-faults-"))
    pg = LocalPostgres(workdir / "pg")
    api: Process | None = None
    worker: Process | None = None
    try:
        pg.init()
        pg.start()
        pg.wait_accepting()
        url = ensure_database(pg.url(), "tradeops")
        migrate.upgrade(url)
        agent_key = _arrange_data(url)
        port = free_port()
        env = {
            **os.environ,
            "TRADEOPS_DATABASE_URL": url,
            "TRADEOPS_ENV": "test",
            "TRADEOPS_HOME": str(workdir / "home"),
            "TRADEOPS_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",  # the logs reach the files as they are written
        }
        api = Process(["serve", "--port", str(port)], env, workdir / "api.log")
        worker = Process(["worker", "--concurrency", "4"], env, workdir / "worker.log")
        api.start()
        worker.start()
        base_url = f"http://127.0.0.1:{port}"
        _wait_ready(base_url, api)
        yield Stack(
            pg=pg,
            database_url=url,
            api=api,
            worker=worker,
            base_url=base_url,
            trader=_token(base_url, "trader@demo.test"),
            approver=_token(base_url, "approver@demo.test"),
            admin=_token(base_url, "admin@demo.test"),
            agent_key=agent_key,
            workdir=workdir,
        )
    finally:
        for process in (worker, api):
            if process is not None:
                process.stop()
        pg.stop()
        keep = os.environ.get("TRADEOPS_FAULTS_KEEP")
        if keep:
            print(f"fault suite files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
