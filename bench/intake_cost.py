"""Where a new order's PostgreSQL time goes, on PostgreSQL alone.

pgbench sends `tradeops_submit_order` as our server does (bench/intake_commits.py's
statement), against a fresh bench database (bench/run.py's: embedded PostgreSQL unless
TRADEOPS_BENCH_DATABASE_URL), and this prints two things:

- **By connection count** (`--clients`, alternated `--rounds` times): orders/s and
  PostgreSQL's CPU per order (from /proc). A backend that waits on a lock another one holds
  while the cores are full spends CPU on the wait; the count where CPU per order starts to
  rise is where more connections only take turns on the cores.
- **By function**, one connection (`track_functions = all` for the bench database only):
  each function's time per order, its own and with what it calls. The statement itself
  (planning is cached: its generic plan), then the SQL and PL/pgSQL functions it and the
  triggers call. What is left of the function's total for the statement alone is the
  executor's work: the inserts, their indexes, CHECK constraints and row-level security.

With `--against REVISION`, each count also runs with the database migrated down to that
revision, alternating with head in every round: what the migrations after it gave intake
(the statements are called by name, so pgbench sends the same text to both).

Results: bench/results/intake-cost-<date>[-n].json.

    uv run --frozen python bench/intake_cost.py --clients 1 2 6 16 --rounds 2
    uv run --frozen python bench/intake_cost.py --clients 1 6 --rounds 3 --against 0028
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any, TypeVar

import psycopg
from alembic.util import CommandError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import intake_commits
from bench import run as bench

from tradeops.db import migrate
from tradeops.db.urls import libpq_url

T = TypeVar("T")
FUNCTIONS = """
SELECT funcname, calls, total_time, self_time FROM pg_stat_user_functions
ORDER BY total_time DESC
"""
INTAKE = "tradeops_submit_order"


def by_function(url: str, script: Path, seconds: float, cpu: bench.DatabaseCpu) -> dict[str, Any]:
    """One connection with every function's time counted (which adds a little to each
    call): µs per order, each function's, the orders being the intake function's calls."""
    with psycopg.connect(url, autocommit=True) as connection:
        name = connection.execute("SELECT current_database()").fetchone()
        database = f'"{name[0] if name else ""}"'
        connection.execute(f"ALTER DATABASE {database} SET track_functions = 'all'")
        connection.execute("SELECT pg_stat_reset()")
    run = intake_commits.measure(url, script, 1, seconds, cpu)
    time.sleep(1)  # the backend that ended reports its counters as it exits
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(FUNCTIONS).fetchall()
        connection.execute(f"ALTER DATABASE {database} RESET track_functions")
    orders = max((calls for name, calls, _, _ in rows if name == INTAKE), default=0)
    return {
        **run,
        "orders": orders,
        "functions": [
            {
                "function": name,
                "calls_per_order": round(calls / orders, 2),
                "total_us": round(total * 1000 / orders, 1),
                "self_us": round(own * 1000 / orders, 1),
            }
            for name, calls, total, own in rows
        ]
        if orders
        else [],
    }


def in_turn(items: list[T], turn: int) -> list[T]:
    """`items` in the order of round `turn`: each round starts one further on, so no item is
    always measured first."""
    start = turn % len(items)
    return items[start:] + items[:start]


def at(url: str, revision: str) -> None:
    """The bench database migrated up or down to `revision`."""
    if revision == "head":
        migrate.upgrade(url)
        return
    try:
        migrate.downgrade(url, revision)
    except CommandError:  # a revision after the database's: up to it
        migrate.upgrade(url, revision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 6, 16])
    parser.add_argument("--rounds", type=int, default=2, help="times each count runs")
    parser.add_argument("--seconds", type=float, default=8.0, help="per run")
    parser.add_argument(
        "--against", metavar="REVISION", help="alternate head with the database at REVISION"
    )
    args = parser.parse_args()
    revisions = ["head", args.against] if args.against else ["head"]
    bench.WORK.mkdir(exist_ok=True)
    started = datetime.now()
    runs: dict[str, list[dict[str, Any]]] = {}
    with bench.bench_database() as (server_url, url):
        version = bench.postgres_version(server_url)
        pg = libpq_url(url)
        script = bench.WORK / "intake.sql"
        script.write_text(intake_commits.intake_statement(bench._AGENT_KEY[0]))
        cpu = bench.DatabaseCpu(pg)
        for turn in range(args.rounds):
            for clients in args.clients:
                for revision in in_turn(revisions, turn):
                    if args.against:
                        at(url, revision)
                    with psycopg.connect(pg, autocommit=True) as connection:
                        connection.execute("CHECKPOINT")  # each run starts from clean pages
                    run = intake_commits.measure(pg, script, clients, args.seconds, cpu)
                    label = f"{clients}" + (f" at {revision}" if args.against else "")
                    runs.setdefault(label, []).append(run)
                    bench.console.print(
                        f"{label:>12} connections {run['orders_per_s']:6} orders/s,"
                        f" PG {run['db_cpu_ms_per_order']} ms/order"
                    )
        if args.against:
            at(url, "head")  # the functions' times are head's
        functions = by_function(pg, script, args.seconds, cpu)
    for label, done in runs.items():
        rates = sorted(run["orders_per_s"] for run in done)
        cpu_ms = sorted(run["db_cpu_ms_per_order"] or 0.0 for run in done)
        bench.console.print(
            f"{label:>12} connections: orders/s {rates[0]}-{rates[-1]} (median {median(rates)}),"
            f" PG ms/order {cpu_ms[0]}-{cpu_ms[-1]}"
        )
    bench.console.print(f"by function, one connection, µs per order ({functions['orders']}):")
    for row in functions["functions"]:
        bench.console.print(f"  {row['function']:56} {row['total_us']:7} {row['self_us']:7} own")
    path = bench.results_path(f"intake-cost-{datetime.now():%Y-%m-%d}")
    report = {
        **bench.provenance(started, version),
        "seconds": args.seconds,
        "against": args.against,  # the revision head alternated with (None: head alone)
        "by_connections": runs,
        "by_function": functions,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    bench.console.print(f"results: {path}")


if __name__ == "__main__":
    main()
