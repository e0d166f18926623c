"""New orders per second on PostgreSQL alone, with and without NOTIFY in intake's transaction.

PostgreSQL serializes the commits of transactions that NOTIFY (a lock held from before the
commit record until it is flushed), so concurrent intakes that notify cannot share a flush.
Migration 0027 takes the NOTIFY out of POST /orders' one statement. This measures what that
gives, with no HTTP server in the way: pgbench sends `tradeops_submit_order` as our server
does (the demo agent's key, who may submit, the seed order) from `--clients` connections,
against a fresh bench database (bench/run.py's: embedded PostgreSQL unless
TRADEOPS_BENCH_DATABASE_URL), alternating three variants `--rounds` times:

- `notify_in_transaction`: both notify triggers as before 0027 (the order event's and the
  risk job's NOTIFY at intake's commit);
- `wakes_after_commit`: as 0027 installs them (intake's transaction sends none); the
  application's batches of wake-ups are left out: under load many orders share one;
- `wakes_each_after_commit`: the same, and every order sends its own wake-ups right after,
  in a second transaction (`tradeops_wake`): a batch of one, the least a batch can save.

For each: orders/s and PostgreSQL's CPU per order (from /proc, as bench/run.py reads it).
Results: bench/results/intake-commits-<date>[-n].json.

    uv run --frozen python bench/intake_commits.py --clients 16 --rounds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from statistics import median
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import run as bench

from tradeops.auth.authentication import credential_parameters
from tradeops.auth.keys import parse_key
from tradeops.auth.permissions import Action, who_may
from tradeops.auth.repository import AUTHENTICATE
from tradeops.auth.tokens import TokenService
from tradeops.db.prepared import Query
from tradeops.db.urls import libpq_url
from tradeops.jobs.defer import RISK_QUEUE, job_wakeups
from tradeops.orders import repository as orders_repo
from tradeops.orders.schemas import OrderCreate
from tradeops.orders.service import intake_values
from tradeops.orders.stream import event_wakeup
from tradeops.settings import Settings

MIGRATION = bench.ROOT / "src/tradeops/migrations/versions/0027_intake_wakes_after_commit.py"
# A new order's wake-ups on their channels (orders.service.wakeups_of), payloads left empty.
CHANNELS = [channel for channel, _ in [event_wakeup(0, 0), *job_wakeups(RISK_QUEUE, 0)]]
WAKE = (
    "SELECT tradeops_wake(ARRAY[" + ", ".join(f"'{c}'" for c in CHANNELS) + "],"
    " ARRAY[" + ", ".join("'{}'" for _ in CHANNELS) + "]);\n"
)


def triggers() -> tuple[str, str]:
    """(as before 0027, as 0027 installs them): the migration's own SQL."""
    spec = importlib.util.spec_from_file_location("migration_0027", MIGRATION)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    return migration.UNGATE_TRIGGERS, migration.GATE_TRIGGERS


def key_credential(key: str) -> dict[str, Any]:
    """Our authenticating statement's parameters for an API key, as the server passes them
    (no token is verified for a key, so the token service is never asked)."""
    return credential_parameters(key, TokenService(Settings()), "bench")


def intake_statement(key: str) -> str:
    """tradeops_submit_order as our server sends it (orders.service.submit_in_one_statement:
    the key's credential, who may submit, the seed order), its values written in."""
    order = OrderCreate.model_validate(bench.SEED_ORDER)
    params = key_credential(key) | who_may(Action.SUBMIT_ORDER) | intake_values(order, None)
    statement = orders_repo.SUBMIT_IN_ONE_STATEMENT
    return with_values(statement, params | {"lock_timeout_ms": 5000}) + ";\n"


def literal(value: Any) -> str:
    """A value written into SQL, as pgbench needs it (no colon left for it to read)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, list):
        value = "{" + ",".join(str(v) for v in value) + "}"
    return "'" + str(value).replace("'", "''").replace(":", "' || chr(58) || '") + "'"


def with_values(statement: Query[Any], values: dict[str, Any]) -> str:
    prepared = statement.prepared
    return re.sub(
        r"\$(\d+)", lambda m: literal(values[prepared.names[int(m.group(1)) - 1]]), prepared.sql
    )


def transaction_scripts(url: str, key: str) -> tuple[str, str]:
    """A new order in a transaction, as our server records one with an Idempotency-Key or
    for the MCP tool (without the key's own statements): BEGIN, the authenticating statement,
    intake, COMMIT. (as before 0028: intake's statement itself; as 0028 runs it:
    tradeops_record_order.)"""
    with psycopg.connect(url) as connection:
        row = connection.execute(
            "SELECT k.id, k.owner_user_id, array_agg(m.desk_id ORDER BY m.desk_id)"
            " FROM api_keys k JOIN desk_members m ON m.user_id = k.owner_user_id"
            " WHERE k.prefix = %s GROUP BY k.id",
            (parse_key(key),),
        ).fetchone()
    assert row is not None
    key_id, user_id, desk_ids = row
    order = OrderCreate.model_validate(bench.SEED_ORDER)
    values = intake_values(order, None) | {
        "created_by": user_id,
        "created_by_key_id": key_id,
        "all_desks": False,
        "desk_ids": desk_ids,
    }
    authenticate = with_values(AUTHENTICATE, key_credential(key))
    begin, commit = "BEGIN;\n" + authenticate + ";\n", "COMMIT;\n"
    return (
        begin + with_values(orders_repo.SUBMIT_ORDER, values) + ";\n" + commit,
        begin + with_values(orders_repo.RECORD_ORDER, values) + ";\n" + commit,
    )


def pgbench() -> str:
    found = shutil.which("pgbench")
    if found is None:
        raise SystemExit("pgbench is needed: apt-get install postgresql-client")
    return found


def measure(
    url: str, script: Path, clients: int, seconds: float, cpu: bench.DatabaseCpu
) -> dict[str, Any]:
    before = cpu.snapshot()
    command = pgbench_command(url, script, clients, seconds)
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    time.sleep(0.5)  # the backends that ended are reaped: their CPU is the postmaster's
    used = cpu.used_since(before)
    orders, rate = pgbench_counts(out)
    return {
        "orders_per_s": round(rate),
        "db_cpu_ms_per_order": None if used is None else round(used * 1000 / orders, 3),
    }


def pgbench_command(url: str, script: Path, clients: int, seconds: float) -> list[str]:
    command = [pgbench(), "-n", "-M", "prepared", "-c", str(clients), "-j", "2"]
    return [*command, "-T", str(int(seconds)), "-f", str(script), url]


def pgbench_counts(out: str) -> tuple[int, float]:
    """(orders, orders a second) from pgbench's report."""
    orders = int(re.search(r"actually processed: (\d+)", out).group(1))  # type: ignore[union-attr]
    return orders, float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="pgbench connections")
    parser.add_argument("--rounds", type=int, default=3, help="times each variant runs")
    parser.add_argument("--seconds", type=float, default=8.0, help="per run")
    parser.add_argument(
        "--transaction",
        action="store_true",
        help="a new order in a transaction instead (an Idempotency-Key, MCP): intake's"
        " statement as before migration 0028, tradeops_record_order, and it with its wake-ups",
    )
    args = parser.parse_args()
    before_0027, as_0027 = triggers()
    work = bench.WORK
    work.mkdir(exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    started = datetime.now()
    with bench.bench_database() as (server_url, url):
        version = bench.postgres_version(server_url)
        pg = libpq_url(url)
        intake = work / "intake.sql"
        intake.write_text(intake_statement(bench._AGENT_KEY[0]))
        intake_and_wake = work / "intake_and_wake.sql"
        intake_and_wake.write_text(intake.read_text() + WAKE)
        variants = {
            "notify_in_transaction": (before_0027, intake),
            "wakes_after_commit": (as_0027, intake),
            "wakes_each_after_commit": (as_0027, intake_and_wake),
        }
        if args.transaction:
            notifying, waking = transaction_scripts(pg, bench._AGENT_KEY[0])
            (work / "transaction_notifying.sql").write_text(notifying)
            (work / "transaction_waking.sql").write_text(waking)
            (work / "transaction_waking_each.sql").write_text(waking + WAKE)
            variants = {
                "transaction_notifying": (as_0027, work / "transaction_notifying.sql"),
                "transaction_wakes_after": (as_0027, work / "transaction_waking.sql"),
                "transaction_wakes_each": (as_0027, work / "transaction_waking_each.sql"),
            }
        cpu = bench.DatabaseCpu(pg)
        for _ in range(args.rounds):
            for name, (installed, script) in variants.items():
                with psycopg.connect(pg, autocommit=True) as connection:
                    connection.execute(installed)
                    connection.execute("CHECKPOINT")  # each run starts from clean pages
                run = measure(pg, script, args.clients, args.seconds, cpu)
                runs.setdefault(name, []).append(run)
                cpu_ms = run["db_cpu_ms_per_order"]
                bench.console.print(
                    f"{name:24} {run['orders_per_s']:6} orders/s, PG {cpu_ms} ms/order"
                )
    path = bench.results_path(f"intake-commits-{datetime.now():%Y-%m-%d}")
    report = {
        **bench.provenance(started, version),
        "clients": args.clients,
        "transaction": args.transaction,
        "seconds": args.seconds,
        "runs": runs,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    for name, done in runs.items():
        rates = sorted(run["orders_per_s"] for run in done)
        bench.console.print(f"{name:24} orders/s {rates[0]}-{rates[-1]}, median {median(rates)}")
    bench.console.print(f"results: {path}")


if __name__ == "__main__":
    main()
