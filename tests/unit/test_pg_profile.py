"""bench/pg_profile.py reads perf report's tables: each line's first figure and its symbol."""

from __future__ import annotations

from bench.pg_profile import table

WITH_CALLEES = """\
# Children      Self  Symbol
# ........  ........  ..................
#
    84.38%     0.12%  [.] standard_ExecutorRun                -      -
     8.02%     0.00%  [.] ExecConstraints                     -      -
     6.17%     0.00%  [k] do_fsync                            -      -
"""
PERIODS = """\
# Period  Symbol
#
      18018018  [.] AcquireExecutorLocks                       -      -
       1001001  [k] finish_task_switch.isra.0                  -      -
"""


def test_a_symbols_share_with_what_it_calls() -> None:
    assert table(WITH_CALLEES) == [
        ("84.38", "standard_ExecutorRun"),
        ("8.02", "ExecConstraints"),
        ("6.17", "do_fsync"),
    ]


def test_a_symbols_own_cpu() -> None:
    assert table(PERIODS) == [
        ("18018018", "AcquireExecutorLocks"),
        ("1001001", "finish_task_switch.isra.0"),
    ]
