"""`tradeops serve --workers 2` on the test database: both processes serve, and one scrape of
/metrics counts the requests of both, whichever process answers it.

Runs the installed `tradeops` script as a real process tree on a free port, and stops that
tree by pid at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

TRADEOPS = str(Path(sys.executable).with_name("tradeops"))  # the installed console script
READY = "/health/ready"  # answered from the database: a process opens a connection for it
BURST = 16  # requests sent at once, each on its own connection, so both processes accept
START_SECONDS = 240  # two processes importing the app on a loaded two-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children_of(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(child) for child in path.read_text().split()} if path.exists() else set()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_tree(server: subprocess.Popen[bytes], workers: set[int]) -> None:
    """SIGTERM to the supervisor (it stops its workers); SIGKILL by pid to what outlives it."""
    workers = workers | children_of(server.pid)
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)
    for pid in workers:
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@contextmanager
def serving(database_url: str, home: Path, workers: int) -> Iterator[tuple[str, set[int]]]:
    """`tradeops serve --workers N`; yields its URL and its worker pids once all N serve."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADEOPS_", "PROMETHEUS"))}
    env |= {
        "TRADEOPS_DATABASE_URL": database_url,
        "TRADEOPS_HOME": str(home),
        "TRADEOPS_ENV": "test",
        "TRADEOPS_MAINTENANCE": "false",  # connections are opened by requests alone
        "TRADEOPS_ACCESS_LOG": "false",
        "TRADEOPS_METRICS_DIR": str(home / "metrics"),
    }
    with (home / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            [TRADEOPS, "serve", "--workers", str(workers), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    pids: set[int] = set()
    try:
        deadline = time.monotonic() + START_SECONDS
        while len(pids) < workers:
            log_text = (home / "serve.log").read_text(errors="replace")
            assert server.poll() is None, log_text
            assert time.monotonic() < deadline, log_text
            time.sleep(1)
            pids = set(pool_connections(url)) if _answers(url) else set()
        # (Its other child is multiprocessing's resource tracker.)
        assert pids <= children_of(server.pid), "the pids are the supervisor's workers"
        yield url, pids
    finally:
        stop_tree(server, pids)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/live", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as http:
        response = http.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def pool_connections(url: str) -> dict[int, float]:
    """Open database connections (in use and idle) by worker pid, from one scrape."""
    by_pid: dict[int, float] = {}
    for labels, value in scrape(url).get("tradeops_db_pool_connections", []):
        pid = int(labels["pid"])
        by_pid[pid] = by_pid.get(pid, 0.0) + value
    return by_pid


def ready_requests_counted(url: str) -> float:
    samples = scrape(url)["tradeops_http_requests_total"]
    return sum(
        value for labels, value in samples if labels["route"] == READY and labels["status"] == "200"
    )


def burst(url: str) -> None:
    def one(_: int) -> int:
        # A connection per request: which process accepts it is the kernel's choice.
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as http:
            return http.get(f"{url}{READY}", timeout=30).status_code

    with ThreadPoolExecutor(BURST) as pool:
        assert set(pool.map(one, range(BURST))) == {200}


@pytest.mark.slow
def test_two_processes_serve_and_one_scrape_counts_both(database_url: str, tmp_path: Path) -> None:
    with serving(database_url, tmp_path, workers=2) as (url, pids):
        sent = 0
        # Until each process has served a request from the database (its pool has opened a
        # connection), within a bound: the kernel hands connections to either process.
        while sent < 40 * BURST:
            burst(url)
            sent += BURST
            time.sleep(1.5)  # each process refreshes its pool gauge every second
            if all(pool_connections(url).get(pid, 0) >= 1 for pid in pids):
                break
        assert all(pool_connections(url).get(pid, 0) >= 1 for pid in pids), "one never served"
        # Every scrape, whichever process answers it, counts what both served.
        for _ in range(6):
            assert ready_requests_counted(url) == sent
    # Each process marked itself dead as it stopped: its live gauges are gone.
    assert not list((tmp_path / "metrics").glob("gauge_live*.db"))
