"""What maker-checker's triggers (migration 0011) cost an approval and an intake.

Two databases on one server, one migrated to 0010 (before), one to head (after), the same
rows in each. Per round and database, in a rolled-back transaction as tradeops_app: N
approvals (REVIEWED → APPROVED) in an approver's context, then N orders inserted in a
trader's, each one statement under EXPLAIN ANALYZE, which reports the statement's time and
the maker-checker triggers' own time. The rounds alternate between the databases; the
median per row is reported, in µs.

    TRADEOPS_BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        uv run --frozen python bench/maker_checker_cost.py --orders 5000 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import uuid

import psycopg

from tradeops.db import migrate
from tradeops.db.embedded import ensure_database

SETUP = """
INSERT INTO desks (id, code, name) VALUES (1, 'EQ-US', 'US Equities');
INSERT INTO clients (external_id, name, desk_id) VALUES ('CUST-1001', 'Client', 1);
INSERT INTO instruments (symbol, name, currency, lot_size, tick_size)
    VALUES ('AAPL', 'Apple', 'USD', 1, 0.01);
INSERT INTO users (id, email, name, role) OVERRIDING SYSTEM VALUE VALUES
    (1, 'trader@bench', 'trader', 'trader'), (2, 'approver@bench', 'approver', 'approver');
INSERT INTO desk_members VALUES (1, 1), (2, 1);
INSERT INTO orders (desk_id, client_id, instrument_id, side, order_type, quantity, price,
                    currency, created_by)
    SELECT 1, c.id, i.id, 'BUY', 'LIMIT', 10, 1.5, 'USD', 1
    FROM clients c, instruments i, generate_series(1, %(orders)s);
UPDATE orders SET status = 'REVIEWED', risk_status = 'PASSED';
"""

CONTEXT = """
SELECT set_config('role', 'tradeops_app', true), set_config('tradeops.user_id', %s, true),
       set_config('tradeops.role', %s, true), set_config('tradeops.desk_ids', '{1}', true),
       set_config('tradeops.all_desks', 'off', true), set_config('tradeops.api_key_id', '', true),
       set_config('tradeops.request_id', 'bench', true)
"""

# One statement over every order, so EXPLAIN ANALYZE reports the triggers' own time per row
# beside the statement's (the statement's time includes the triggers').
APPROVALS = """
EXPLAIN (ANALYZE, FORMAT JSON)
UPDATE orders SET status = 'APPROVED', approved_by = 2, version = version + 1, updated_at = now()
WHERE status = 'REVIEWED'
"""

INTAKE = """
EXPLAIN (ANALYZE, FORMAT JSON)
INSERT INTO orders (desk_id, client_id, instrument_id, side, order_type, quantity, price,
                    currency, created_by)
SELECT 1, 1, 1, 'BUY', 'LIMIT', 10, 1.5, 'USD', 1 FROM generate_series(1, %(orders)s)
"""

MAKER_CHECKER_TRIGGERS = ("orders_maker_checker", "orders_undecided_birth")


def prepare(server: str, revision: str, orders: int) -> str:
    url = ensure_database(server, f"tradeops_bench_mc_{revision}_{uuid.uuid4().hex[:6]}")
    migrate.upgrade(url, revision)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SETUP.replace("%(orders)s", str(orders)))
        conn.execute("VACUUM ANALYZE")
    return url


def timed(url: str, user: str, role: str, statement: str) -> tuple[float, float]:
    """Milliseconds the statement took and its maker-checker triggers took, in a transaction
    rolled back afterwards."""
    with psycopg.connect(url) as conn:
        conn.execute(CONTEXT, (user, role))
        row = conn.execute(statement).fetchone()  # type: ignore[call-overload]
        conn.rollback()
    assert row is not None
    plan = row[0][0]
    triggers = sum(
        t["Time"] for t in plan.get("Triggers", []) if t["Trigger Name"] in MAKER_CHECKER_TRIGGERS
    )
    return float(plan["Execution Time"]), float(triggers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    server = os.environ["TRADEOPS_BENCH_DATABASE_URL"]
    urls = {"before (0010)": prepare(server, "0010", args.orders)}
    urls["after (head)"] = prepare(server, "head", args.orders)
    intake = INTAKE.replace("%(orders)s", str(args.orders))
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(args.rounds):
            for name, url in urls.items():
                for step, user, role, sql in (
                    ("approval", "2", "approver", APPROVALS),
                    ("intake", "1", "trader", intake),
                ):
                    total, triggers = timed(url, user, role, sql)
                    for part, ms in (("statement", total), ("triggers", triggers)):
                        per_row = ms / args.orders * 1e3
                        samples.setdefault((f"{step} {part}", name), []).append(per_row)
    finally:
        for url in urls.values():
            name = url.rsplit("/", 1)[-1]
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    for (step, name), values in sorted(samples.items()):
        print(
            f"{step:19} {name:14} median {statistics.median(values):6.1f} µs/row"
            f"  (min {min(values):6.1f}, max {max(values):6.1f})"
        )


if __name__ == "__main__":
    main()
