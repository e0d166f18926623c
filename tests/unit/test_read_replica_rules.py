"""The read-replica rules that need no server: the lag estimate, the settings that tie the
read-your-writes window to it, and multi-host URLs for each driver."""

from __future__ import annotations

import math
import time

import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine

from tradeops.db.pool import Database
from tradeops.db.replicas import ReadReplica, lag_of, wal_position
from tradeops.db.urls import libpq_url, psycopg_url, with_database
from tradeops.health.router import _replica_readiness
from tradeops.settings import Settings

MULTI = "postgresql://app:s%40cret@db1:5433,db2:5432/tradeops?target_session_attrs=read-write"


def test_wal_positions_compare_as_bytes() -> None:
    assert wal_position("0/0") == 0
    assert wal_position("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert wal_position(None) is None


def test_a_replica_that_replayed_the_latest_primary_position_has_no_lag() -> None:
    assert lag_of(100, replay_age=600.0, primary_positions=[(9.0, 90), (10.0, 100)], now=10.1) == 0


def test_the_first_write_after_an_idle_spell_is_not_minutes_of_lag() -> None:
    # The last replayed commit is 10 minutes old, but a check 1 s ago found it caught up.
    positions = [(9.0, 100), (10.0, 150)]
    assert lag_of(100, replay_age=600.0, primary_positions=positions, now=10.05) == pytest.approx(
        1.05
    )


def test_without_this_checks_sample_an_earlier_one_bounds_the_lag_by_the_time_since() -> None:
    # Caught up with the sample of 1 s ago; the primary could not be read since.
    positions = [(9.0, 90), (10.0, 100)]
    assert lag_of(
        100, replay_age=600.0, primary_positions=positions, now=11.0, latest_is_now=False
    ) == pytest.approx(1.0)
    assert (
        lag_of(100, replay_age=0.3, primary_positions=positions, now=11.0, latest_is_now=False)
        == 0.3
    )


def test_a_replica_behind_every_sample_is_as_old_as_its_last_replayed_commit() -> None:
    positions = [(9.0, 120), (10.0, 150)]
    assert lag_of(100, replay_age=3.5, primary_positions=positions, now=10.05) == 3.5
    assert lag_of(100, replay_age=None, primary_positions=positions, now=10.05) == math.inf


def _replica_of_a_primary_never_reached() -> ReadReplica:
    """A ReadReplica at 5/2/1 s whose pools are never opened here."""
    settings = Settings(
        env="test",
        _env_file=None,  # type: ignore[call-arg]
        read_your_writes_seconds=5,
        read_max_lag_seconds=2,
        read_check_seconds=1,
    )
    nowhere = "postgresql://nobody@127.0.0.1:1/none"
    return ReadReplica(settings, Database(settings, nowhere), Database(settings, nowhere))


# A standby whose WAL receiver has stopped (cut off from the primary, which may still take
# writes from elsewhere): it has received no more than it replayed, and replayed nothing
# for ten minutes.
STALLED = {"in_recovery": True, "replayed": "0/100", "received": "0/100", "replay_age": 600.0}


def test_without_the_primary_position_the_lag_runs_from_the_last_check_it_was_caught_up() -> None:
    replica = _replica_of_a_primary_never_reached()
    at_last_check = replica._measured(STALLED, time.monotonic() - 4.0, primary_position=0x100)
    assert (at_last_check.lag_seconds, at_last_check.lag_bytes) == (0.0, 0)

    # The primary's position cannot be read now: having replayed all it received proves
    # nothing.
    replica.state = replica._measured(STALLED, time.monotonic(), primary_position=None)
    assert replica.state.lag_seconds is not None and replica.state.lag_seconds >= 4.0
    assert replica.state.lag_bytes is None, "how many bytes behind is not known"
    assert replica.for_reads() is None, "over the 2 s allowed: reads go to the primary"
    readiness = _replica_readiness(replica)
    assert (readiness.status, readiness.reads_on) == ("lagging", "primary")
    assert readiness.lag_seconds is not None and readiness.lag_seconds >= 4.0


def test_a_replica_never_measured_against_the_primary_is_as_old_as_its_last_commit() -> None:
    replica = _replica_of_a_primary_never_reached()
    state = replica._measured(STALLED, time.monotonic(), primary_position=None)
    assert state.lag_seconds == 600.0 and state.lag_bytes is None
    no_commit_replayed = replica._measured(
        {**STALLED, "replay_age": None}, time.monotonic(), primary_position=None
    )
    assert no_commit_replayed.lag_seconds == math.inf
    replica.state = no_commit_replayed
    assert replica.for_reads() is None
    assert _replica_readiness(replica).lag_seconds is None, "unknown: left out, not 0"


def test_the_read_your_writes_window_covers_the_lag_allowed_and_two_checks() -> None:
    base = {"env": "test", "_env_file": None}
    Settings(**base, read_your_writes_seconds=5, read_max_lag_seconds=2, read_check_seconds=1)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="READ_YOUR_WRITES_SECONDS"):
        Settings(**base, read_your_writes_seconds=3, read_max_lag_seconds=2, read_check_seconds=1)  # type: ignore[arg-type]


def test_a_multi_host_url_reaches_every_driver_with_its_hosts_in_order() -> None:
    assert libpq_url(MULTI) == MULTI
    assert libpq_url(MULTI.replace("postgresql:", "postgresql+asyncpg:")) == MULTI
    assert with_database(MULTI, "other") == MULTI.replace("/tradeops?", "/other?")
    engine = create_engine(psycopg_url(MULTI))
    _, params = engine.dialect.create_connect_args(engine.url)
    assert (params["host"], params["port"]) == ("db1,db2", "5433,5432")
    assert (params["user"], params["password"], params["dbname"]) == ("app", "s@cret", "tradeops")
    assert params["target_session_attrs"] == "read-write"


def test_a_single_host_url_is_spelled_as_before() -> None:
    url = "postgresql+psycopg://app:pw@db1:5432/tradeops?sslmode=require"
    assert libpq_url(url) == "postgresql://app:pw@db1:5432/tradeops?sslmode=require"
