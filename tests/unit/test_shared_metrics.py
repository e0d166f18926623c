"""Metrics shared by worker processes (prometheus_client's multiprocess mode): a worker killed
without notice (its lifespan never ran to mark it dead) leaves no pool series behind.

The two-process server itself is tests/integration/test_many_processes.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from tradeops.observability import SHARED_METRICS_DIR, Metrics

# A worker's pool gauge, as observability.Metrics.watching_pool writes it, then a death
# that runs no clean-up (as SIGKILL from uvicorn's supervisor).
KILLED_WORKER = """
import os
from prometheus_client import Gauge
gauge = Gauge("tradeops_db_pool_connections", "h", ["state"], multiprocess_mode="liveall")
gauge.labels("idle").set(3)
os._exit(0)
"""


def test_a_scrape_forgets_a_worker_killed_without_notice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, SHARED_METRICS_DIR: str(tmp_path)}
    subprocess.run([sys.executable, "-c", KILLED_WORKER], env=env, check=True, timeout=60)
    assert list(tmp_path.glob("gauge_liveall_*.db")), "the killed worker left its gauge"
    monkeypatch.setenv(SHARED_METRICS_DIR, str(tmp_path))

    scraped = generate_latest(Metrics().registry).decode()

    assert "tradeops_db_pool_connections{" not in scraped
    assert list(tmp_path.glob("gauge_liveall_*.db")) == []
