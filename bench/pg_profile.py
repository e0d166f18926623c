"""What PostgreSQL's executor does with a new order's CPU, sampled with perf.

pgbench sends intake's statement (bench/intake_commits.py's, as our server sends it) from
each `--clients` count in turn, against a fresh bench database (bench/run.py's: embedded
PostgreSQL unless TRADEOPS_BENCH_DATABASE_URL), and `perf record` samples the database's
backends (not PostgreSQL's background processes) with their call stacks. For each count it
prints µs of a backend's CPU per order:

- **by step of the executor**, each with what it calls: starting each statement's plan
  (ExecutorStart), the cached plans' checks (GetCachedPlan), the CHECK constraints
  (ExecConstraints), the triggers (ExecCallTriggerFunc) and their WHEN clauses
  (TriggerEnabled), the foreign keys, the index entries, SQL functions (planned at every
  call: fmgr_sql), the commit and its WAL flush;
- **by function**, the costliest on their own: where a count's extra CPU goes shows as the
  functions that grow from one count to the next.

With `--against REVISION`, each count is profiled `--rounds` times with the database at head
and as many migrated down to that revision, taking turns (bench/intake_cost.py's `at`), and
each column is the median of its rounds: a step's µs against the same step before the
migrations after REVISION.

perf comes with Debian's linux-perf package; it samples processes of the same user
(kernel.perf_event_paranoid 2, the default) and unwinds PostgreSQL's stacks from their
DWARF tables (--call-graph dwarf), which takes a few seconds of perf's own per run. Results:
bench/results/pg-profile-<date>[-n].json.

    uv run --frozen python bench/pg_profile.py --clients 1 6 --seconds 6
    uv run --frozen python bench/pg_profile.py --clients 1 --rounds 3 --against 0031
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import intake_commits, intake_cost
from bench import run as bench

from tradeops.db.urls import libpq_url

FREQUENCY = 997  # samples a second of a backend's CPU
# The executor's steps, by the PostgreSQL function that does each (with what it calls).
STEPS = {
    "start each statement's plan": "standard_ExecutorStart",
    "cached plans' checks and locks": "GetCachedPlan",
    "CHECK constraints": "ExecConstraints",
    "triggers": "ExecCallTriggerFunc",
    "triggers' WHEN clauses": "TriggerEnabled",
    "foreign keys": "RI_FKey_check_ins",
    "index entries": "ExecInsertIndexTuples",
    "SQL functions, planned at each call": "fmgr_sql",
    "commit": "CommitTransaction",
    "WAL flush": "XLogFlush",
}
BACKENDS = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> pg_backend_pid()
"""
# perf report's lines: "  12.34%   1.23%  [.] symbol" (--children: with what it calls, on
# its own) or "  123456  [k] symbol" (-F period,symbol).
LINE = re.compile(r"^\s+([\d.]+)%?\s+(?:[\d.]+%\s+)?\[[.k]\]\s+(\S+)")


def perf() -> str:
    found = shutil.which("perf")
    if found is None:
        raise SystemExit("perf is needed: apt-get install linux-perf")
    return found


def record(url: str, script: Path, clients: int, seconds: int, data: Path) -> dict[str, Any]:
    """pgbench at `clients` connections, its backends sampled once all have connected."""
    command = intake_commits.pgbench_command(url, script, clients, seconds)
    load = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    with psycopg.connect(url, autocommit=True) as connection:
        deadline = time.monotonic() + 10
        while len(pids := [row[0] for row in connection.execute(BACKENDS)]) < clients:
            if time.monotonic() > deadline:
                load.kill()
                raise SystemExit(f"pgbench's {clients} connections did not all appear")
            time.sleep(0.05)
    sampling = [perf(), "record", "-F", str(FREQUENCY), "--call-graph", "dwarf,16384"]
    sampling += ["-o", str(data), "-p", ",".join(map(str, pids))]
    sampler = subprocess.Popen(sampling, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    out, _ = load.communicate()
    sampler.send_signal(signal.SIGINT)
    sampler.wait()
    seconds_sampled = time.monotonic() - started
    orders_per_s = intake_commits.pgbench_counts(out)[1]
    return {"orders_per_s": round(orders_per_s), "orders": orders_per_s * seconds_sampled}


def shares(data: Path) -> dict[str, float]:
    """Each symbol's share of the samples with what it calls, in %."""
    return {name: float(value) for value, name in _report(data, "--children")}


def own_ns(data: Path) -> dict[str, int]:
    """Each symbol's CPU on its own, in ns: the periods of its samples (perf's cpu-clock
    counts a sample's period in ns of the task's CPU)."""
    return {
        name: int(value) for value, name in _report(data, "--no-children", "-F", "period,symbol")
    }


def _report(data: Path, *options: str) -> list[tuple[str, str]]:
    """(the line's first figure, the symbol) of each line of perf report's table."""
    command = [perf(), "report", "-i", str(data), "--stdio", "--sort", "symbol", "-g", "none"]
    command += options
    return table(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def table(report: str) -> list[tuple[str, str]]:
    return [(found[1], found[2]) for line in report.splitlines() if (found := LINE.match(line))]


def profile(url: str, script: Path, clients: int, seconds: int) -> dict[str, Any]:
    intake_commits.measure(url, script, clients, 1, bench.DatabaseCpu(url))  # plans cached
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "perf.data"
        run = record(url, script, clients, seconds, data)
        inclusive, own = shares(data), own_ns(data)
    us_per_ns = 1e-3 / run["orders"]  # a ns of the backends' CPU in µs per order
    total = sum(own.values())
    return {
        "clients": clients,
        "orders_per_s": run["orders_per_s"],
        "backend_us_per_order": round(total * us_per_ns),
        "steps_us": {
            step: round(inclusive.get(function, 0.0) / 100 * total * us_per_ns, 1)
            for step, function in STEPS.items()
        },
        "functions_own_us": {
            name: round(ns * us_per_ns, 1)
            for name, ns in sorted(own.items(), key=lambda item: -item[1])[:25]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 6])
    parser.add_argument("--seconds", type=int, default=6, help="per count")
    parser.add_argument("--rounds", type=int, default=1, help="profiles of each column")
    parser.add_argument(
        "--against", metavar="REVISION", help="take turns with the database at REVISION"
    )
    args = parser.parse_args()
    revisions = ["head", args.against] if args.against else ["head"]
    bench.WORK.mkdir(exist_ok=True)
    started = datetime.now()
    rounds: dict[tuple[int, str], list[dict[str, Any]]] = {}
    with bench.bench_database() as (server_url, url):
        version = bench.postgres_version(server_url)
        pg = libpq_url(url)
        script = bench.WORK / "intake.sql"
        script.write_text(intake_commits.intake_statement(bench._AGENT_KEY[0]))
        for turn in range(args.rounds):
            for clients in args.clients:
                for revision in intake_cost.in_turn(revisions, turn):
                    if args.against:
                        intake_cost.at(url, revision)
                    done = profile(pg, script, clients, args.seconds)
                    rounds.setdefault((clients, revision), []).append(done)
        if args.against:
            intake_cost.at(url, "head")
    profiles = [
        median_profile(done) | {"revision": revision}
        for (_, revision), done in sorted(rounds.items(), key=lambda item: item[0][0])
    ]
    print_profiles(profiles)
    path = bench.results_path(f"pg-profile-{datetime.now():%Y-%m-%d}")
    report_ = {**bench.provenance(started, version), "seconds": args.seconds}
    report_ |= {"rounds": args.rounds, "against": args.against}
    path.write_text(json.dumps(report_ | {"profiles": profiles}, indent=2) + "\n")
    bench.console.print(f"results: {path}")


def median_profile(done: list[dict[str, Any]]) -> dict[str, Any]:
    """One column from a count's rounds at one revision: each figure the rounds' median (a
    function outside a round's top 25 counts 0 there)."""
    functions = dict.fromkeys(name for p in done for name in p["functions_own_us"])
    return {
        "clients": done[0]["clients"],
        "orders_per_s": round(median(p["orders_per_s"] for p in done)),
        "backend_us_per_order": round(median(p["backend_us_per_order"] for p in done)),
        "steps_us": {step: median(p["steps_us"][step] for p in done) for step in STEPS},
        "functions_own_us": {
            name: median(p["functions_own_us"].get(name, 0.0) for p in done) for name in functions
        },
        "rounds": done,
    }


def print_profiles(profiles: list[dict[str, Any]]) -> None:
    against = any(p["revision"] != "head" for p in profiles)
    labels = [f"{p['clients']} conn" + (f" {p['revision']}" if against else "") for p in profiles]
    counts = "  ".join(f"{label:>12}" for label in labels)
    bench.console.print(f"µs of a backend's CPU per order      {counts}")
    rows = [("all of it", [p["backend_us_per_order"] for p in profiles])]
    rows += [(step, [p["steps_us"][step] for p in profiles]) for step in STEPS]
    for label, values in rows:
        bench.console.print(f"  {label:36} " + "  ".join(f"{v:>12}" for v in values))
    functions = dict.fromkeys(name for p in profiles for name in p["functions_own_us"])
    bench.console.print("by function, on its own:")
    for name in functions:
        values = [p["functions_own_us"].get(name, "") for p in profiles]
        bench.console.print(f"  {name[:36]:36} " + "  ".join(f"{v:>12}" for v in values))


if __name__ == "__main__":
    main()
