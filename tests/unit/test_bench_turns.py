"""make bench's runs take turns (bench/run.py): a run's rounds make one figure."""

from __future__ import annotations

from dataclasses import replace

import pytest
from bench.run import RunResult, Target, combined, p99, rps_ratio


def round_of(rps: float, seconds: float, p50: float, p99: float, cpu: float) -> RunResult:
    requests = round(rps * seconds)
    return RunResult(
        rps=rps,
        p50_ms=p50,
        p99_ms=p99,
        requests=requests,
        errors=1 if rps < 500 else 0,
        errors_by_kind={"status": 1} if rps < 500 else {"timeout": 0},
        connections=32,
        cpu_ms_per_request=cpu,
        db_cpu_ms_per_request=2 * cpu,
        wrk_cpu_ms_per_request=0.04,
        other_cores=0.1 if rps < 500 else 0.0,
        idle_cores=0.6 if rps < 500 else 0.03,
    )


def test_rounds_make_one_run() -> None:
    rounds = [
        round_of(1000, 4, 30.0, 60.0, 0.5),
        round_of(400, 4, 40.0, 230.0, 1.0),  # the machine stalled in this round
        round_of(1000, 4, 31.0, 62.0, 0.5),
    ]
    run = combined(rounds)
    assert run.requests == 9600
    assert run.rps == pytest.approx(9600 / 12)  # all requests over all the rounds' time
    assert (run.p50_ms, run.p99_ms) == (31.0, 62.0)  # the median round's
    # CPU per request over all requests: the slow round's 1,600 requests weigh 1/6.
    assert run.cpu_ms_per_request == pytest.approx((8000 * 0.5 + 1600 * 1.0) / 9600, abs=1e-3)
    assert run.db_cpu_ms_per_request == pytest.approx((8000 * 1.0 + 1600 * 2.0) / 9600, abs=1e-3)
    assert run.other_cores == pytest.approx(0.1 / 3, abs=0.01)  # over the rounds' time
    assert run.idle_cores == pytest.approx((0.6 + 2 * 0.03) / 3, abs=0.01)
    assert run.errors == 1
    assert run.errors_by_kind == {"status": 1, "timeout": 0}
    assert [r["p99_ms"] for r in run.rounds] == [60.0, 230.0, 62.0]


def test_one_round_is_the_run() -> None:
    alone = round_of(1000, 12, 30.0, 60.0, 0.5)
    assert combined([alone]) is alone


def test_no_database_cpu_in_a_round_leaves_none() -> None:
    rounds = [round_of(1000, 4, 30.0, 60.0, 0.5), round_of(900, 4, 30.0, 60.0, 0.5)]
    rounds[1] = replace(rounds[1], db_cpu_ms_per_request=None)
    assert combined(rounds).db_cpu_ms_per_request is None


def test_a_target_shows_its_figure_in_each_round_beside_the_whole_run() -> None:
    """A ratio is taken round by round too (the rounds of every run were taken in the same
    turns), so a result shows how far one round moves it against its bound."""
    ours = combined([round_of(1000, 4, 30.0, 60.0, 0.5), round_of(1200, 4, 28.0, 50.0, 0.4)])
    seed = combined([round_of(500, 4, 60.0, 120.0, 2.0), round_of(400, 4, 70.0, 150.0, 2.5)])
    runs = {"ours": ours, "seed000": seed}
    ratio = Target("ours/seed000 req/s", rps_ratio("ours", "seed000"), ">=", 2.5)
    checked = ratio.check(runs, 32, 4)
    assert checked["value"] == pytest.approx(8800 / 8 / (3600 / 8), abs=1e-3)
    assert checked["rounds"] == [2.0, 3.0]
    assert checked["result"] == "FAIL"
    assert Target("p99", p99("ours"), "<", 55.0).check(runs, 32, 4)["rounds"] == [60.0, 50.0]


def test_runs_of_one_round_or_of_different_rounds_show_no_rounds() -> None:
    one = round_of(1000, 4, 30.0, 60.0, 0.5)
    two = combined([one, one])
    ratio = Target("ours/bare req/s", rps_ratio("ours", "bare"), ">=", 0.4)
    assert ratio.check({"ours": one, "bare": one}, 32, 4)["rounds"] == []
    assert ratio.check({"ours": two, "bare": one}, 32, 4)["rounds"] == []
    assert ratio.check({"ours": two, "bare": two}, 32, 4)["rounds"] == [1.0, 1.0]
