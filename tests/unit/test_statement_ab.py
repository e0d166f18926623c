"""bench/statement_ab.py: a pair's difference is old minus new, and each script is one
statement pgbench can send (no colon left for it to read as a variable)."""

from __future__ import annotations

from bench.statement_ab import STATEMENTS, paired, statements

from tradeops.auth.keys import generate_key


def test_pairs_are_summed_up_old_minus_new() -> None:
    pairs = [{"new": 90.0, "old": 100.0}, {"new": 95.0, "old": 93.0}, {"new": 80.0, "old": 86.0}]
    assert paired(pairs) == {"mean_us": 4.7, "median_us": 6.0, "new_cheaper": 2}


def test_every_statement_has_a_script_without_a_colon_for_pgbench() -> None:
    scripts = statements(generate_key()[0])
    assert tuple(scripts) == STATEMENTS
    for script in scripts.values():
        assert script.endswith(";\n") and ":" not in script.replace("::", "")
