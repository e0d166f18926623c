"""What the migrations since a revision changed in one statement's cost, paired run by run.

A migration that saves a few µs of a statement is lost in a whole order's noise on a
machine whose speed drifts from one minute to the next (bench/intake_cost.py's runs of the
same code differ by a tenth). Here pgbench sends one statement alone from one connection
(latency ≈ the statement's cost), with the bench database at head and migrated down to
`--against` taking turns (or at `--at` instead of head), `--pairs` times: each pair's two
runs share the machine's moment, and the result is the pairs' differences (old minus new:
positive means the newer revision is cheaper), their mean and median, and how many pairs
the newer one was cheaper in.

Statements (`--statement`, bench/run.py's demo data and agent key):

- `authenticate`: the authenticating statement with the agent's API key, as every request's
  first statement and every one-statement read or intake runs it;
- `approvals_limit`, `approvals_market`: the approvals a new order of the seed's desk and
  instrument needs (tradeops_approvals_required, the orders trigger's rule), for a limit
  order (50 at 192.55) and a market order (50, the latest price);
- `order_insert`: one order inserted by the database owner into orders (every CHECK
  constraint and trigger on orders), rolled back.

Results: bench/results/statement-ab-<date>[-n].json.

    uv run --frozen python bench/statement_ab.py --statement authenticate --against 0032
    uv run --frozen python bench/statement_ab.py --statement order_insert --at 0032 --against 0031
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from statistics import mean, median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import intake_commits, intake_cost
from bench import run as bench

from tradeops.auth.repository import AUTHENTICATE
from tradeops.db.urls import libpq_url

# The seed order's client, instrument and amounts (bench/run.py's SEED_ORDER).
_CLIENT, _SYMBOL = bench.SEED_ORDER["client_id"], bench.SEED_ORDER["symbol"]
_QUANTITY, _PRICE = bench.SEED_ORDER["quantity"], bench.SEED_ORDER["price"]
_SEED = (
    f"FROM clients c, instruments i WHERE c.external_id = '{_CLIENT}' AND i.symbol = '{_SYMBOL}'"
)
ORDER_INSERT = (
    "BEGIN;\n"
    "INSERT INTO orders (desk_id, client_id, instrument_id, side, order_type, quantity, price,"
    f" currency, created_by) SELECT c.desk_id, c.id, i.id, '{bench.SEED_ORDER['side']}', 'LIMIT',"
    f" {_QUANTITY}, {_PRICE}, i.currency,"
    " (SELECT id FROM users WHERE role = 'trader' ORDER BY id LIMIT 1) " + _SEED + ";\n"
    "ROLLBACK;\n"
)
STATEMENTS = ("authenticate", "approvals_limit", "approvals_market", "order_insert")


def statements(key: str) -> dict[str, str]:
    """Each statement's pgbench script (STATEMENTS), with the API key `key`."""
    credential = intake_commits.key_credential(key)
    approvals = f"SELECT tradeops_approvals_required(c.desk_id, i.id, {_QUANTITY}, {{}}) {_SEED};\n"
    return {
        # As every request sends it (auth.repository.AUTHENTICATE).
        "authenticate": intake_commits.with_values(AUTHENTICATE, credential) + ";\n",
        "approvals_limit": approvals.format(_PRICE),
        "approvals_market": approvals.format("NULL"),
        "order_insert": ORDER_INSERT,
    }


def latency_us(url: str, script: Path, seconds: int) -> float:
    """pgbench's average latency on one connection, after a second that caches its plans."""
    subprocess.run(intake_commits.pgbench_command(url, script, 1, 1), capture_output=True)
    command = intake_commits.pgbench_command(url, script, 1, seconds)
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    found = re.search(r"latency average = ([\d.]+) ms", out)
    if found is None:
        raise SystemExit(f"no latency in pgbench's report:\n{out}")
    return float(found.group(1)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statement", required=True, choices=STATEMENTS)
    parser.add_argument("--against", metavar="REVISION", required=True)
    parser.add_argument("--at", metavar="REVISION", default="head", help="instead of head")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--seconds", type=int, default=3, help="per run")
    args = parser.parse_args()
    bench.WORK.mkdir(exist_ok=True)
    started = datetime.now()
    pairs: list[dict[str, float]] = []
    new, old = args.at, args.against
    with bench.bench_database() as (server_url, url):
        version = bench.postgres_version(server_url)
        pg = libpq_url(url)
        script = bench.WORK / f"{args.statement}.sql"
        script.write_text(statements(bench._AGENT_KEY[0])[args.statement])
        for turn in range(args.pairs):
            pair = {}
            for side, revision in intake_cost.in_turn([("new", new), ("old", old)], turn):
                intake_cost.at(url, revision)
                pair[side] = round(latency_us(pg, script, args.seconds), 1)
            pairs.append(pair)
            bench.console.print(f"  {new} {pair['new']:7} µs  {old} {pair['old']:7} µs")
        intake_cost.at(url, "head")
    summary = paired(pairs)
    bench.console.print(
        f"{args.statement}: {old} - {new} = {summary['mean_us']} µs on average"
        f" (median {summary['median_us']}), {new} cheaper in {summary['new_cheaper']}"
        f" of {len(pairs)} pairs"
    )
    path = bench.results_path(f"statement-ab-{datetime.now():%Y-%m-%d}")
    report: dict[str, Any] = {**bench.provenance(started, version), "seconds": args.seconds}
    report |= {"statement": args.statement, "at": new, "against": old, "pairs": pairs}
    path.write_text(json.dumps(report | summary, indent=2) + "\n")
    bench.console.print(f"results: {path}")


def paired(pairs: list[dict[str, float]]) -> dict[str, Any]:
    """The pairs' differences in µs, old minus new (positive: the new revision is cheaper)."""
    differences = [pair["old"] - pair["new"] for pair in pairs]
    return {
        "mean_us": round(mean(differences), 1),
        "median_us": round(median(differences), 1),
        "new_cheaper": sum(difference > 0 for difference in differences),
    }


if __name__ == "__main__":
    main()
