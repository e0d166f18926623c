"""make bench's scaling step (bench/run.py): ours and the same-work peer with 1 and N
workers, and the target judged on ours alone."""

from __future__ import annotations

from typing import Any

from bench import run as bench
from bench.run import RunResult, scaling_check, scaling_row


def run_of(rps: float, app_ms: float, errors: int = 0) -> RunResult:
    return RunResult(
        rps=rps,
        p50_ms=30.0,
        p99_ms=50.0,
        requests=round(rps * 12),
        errors=errors,
        errors_by_kind={"status": errors},
        connections=32,
        cpu_ms_per_request=app_ms,
        db_cpu_ms_per_request=1.3,
        wrk_cpu_ms_per_request=0.04,
        other_cores=0.0,
    )


def step(ours: dict[str, Any], same_work: dict[str, Any]) -> dict[str, Any]:
    return {
        "workers": 2,
        "pool_per_worker": 3,
        "connections": 32,
        "noise_band": bench.SCALING_NOISE,
        "scenarios": {"post_order": {**ours, "same_work": same_work}},
    }


def test_n_workers_are_judged_against_the_cores_one_worker_leaves(monkeypatch: Any) -> None:
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda _: {0, 1})
    row = scaling_row(run_of(880, 0.56), run_of(870, 0.73), 2)
    # The cores bound: 2 cores / (0.56 + 1.3 + 0.04) ms = 1,052.6 req/s.
    assert row["bound_by"] == "cores"
    assert row["expected_rps"] == 1052.6
    assert row["measured_over_expected"] == 0.827  # 870 / 1,052.6
    assert row["result"] == "FAIL"
    assert row["n_workers"]["rps_per_worker"] == 435.0


def test_the_same_work_peer_is_a_reference_not_the_target(monkeypatch: Any) -> None:
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda _: {0, 1})
    ours = scaling_row(run_of(880, 0.56), run_of(1000, 0.56), 2)
    failing_peer = scaling_row(run_of(900, 0.4), run_of(600, 0.4), 2)
    assert ours["result"] == "PASS" and failing_peer["result"] == "FAIL"
    assert scaling_check(step(ours, failing_peer))["result"] == "PASS"


def test_an_error_in_either_run_makes_errors(monkeypatch: Any) -> None:
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda _: {0, 1})
    ours = scaling_row(run_of(880, 0.56), run_of(1000, 0.56, errors=3), 2)
    peer = scaling_row(run_of(900, 0.4), run_of(1000, 0.4), 2)
    assert scaling_check(step(ours, peer))["result"] == "ERRORS"


def test_the_table_shows_both_servers(monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.setattr(bench.os, "sched_getaffinity", lambda _: {0, 1})
    ours = scaling_row(run_of(880, 0.56), run_of(870, 0.73), 2)
    peer = scaling_row(run_of(900, 0.4), run_of(890, 0.5), 2)
    monkeypatch.setattr(bench.console, "width", 250)
    bench.print_scaling(step(ours, peer))
    out = capsys.readouterr().out
    assert "post_order, same-work" in out
    assert f"({peer['result']})" in out
