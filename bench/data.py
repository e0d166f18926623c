"""Millions of orders for the list benchmarks (bench/ten_million.py): `make bench-data ROWS=...`.

    make bench-data ROWS=10000000
    TRADEOPS_DATABASE_URL=postgresql://postgres@127.0.0.1:56300/orders10m make bench-data

Writes into the database of TRADEOPS_DATABASE_URL (migrated first), else a database
`tradeops_ten_million` on the embedded server in .tradeops/bench-pgdata. It connects as the
URL's user, who must own the tables (the migration owner): the load is a bulk restore, not
intake, and holds the orders table locked until it commits.

The shape is the issue's: 80% of the orders on one desk (BENCH-BIG), the rest on four small
desks; 20,000 clients, each desk's last 20 with no orders; 5,000 instruments whose orders
fall off as 1/rank^1.2 (the rarest has ~80 orders in ten million), and one, BENCH-NONE, with
none; created_at spread evenly over the last 730 days, ids in created order. Statuses age:
the newest orders still await a decision, older ones are mostly FILLED, CANCELLED or
REJECTED, with a rare few left REVIEWED or PENDING. Sides are half BUY, half SELL; one order
in four carries a client_order_id (`BX-<n>`, n unique over every load).

Every row satisfies every constraint and trigger rule. The rows are streamed with COPY FROM
STDIN in one transaction, in which the orders' user triggers are disabled (the maker-checker
triggers refuse any order born decided, and a per-row PL/pgSQL trigger would cost more than
the COPY), the orders' secondary indexes and foreign keys are dropped and rebuilt after the
COPY, as pg_restore does: re-adding a foreign key checks every row in one pass. What the
triggers check is then checked for every new row by one query each (`TRIGGER_RULES`); any
violation rolls the whole load back, triggers included.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from tradeops.db import migrate
from tradeops.db.embedded import ensure_database, start_embedded
from tradeops.db.urls import libpq_url

ROOT = Path(__file__).resolve().parent.parent
BIG_DESK = "BENCH-BIG"
SMALL_DESKS = ("BENCH-S1", "BENCH-S2", "BENCH-S3", "BENCH-S4")
BIG_DESK_SHARE = 0.8
CLIENTS = 20_000
IDLE_CLIENTS_PER_DESK = 20  # each desk's last clients: no orders (a filter with no match)
INSTRUMENTS = 5_000
SYMBOL_SKEW = 1.2  # an instrument's share of orders ∝ 1 / rank ** SYMBOL_SKEW
UNTRADED_SYMBOL = "BENCH-NONE"
TRADERS_PER_DESK, APPROVERS_PER_DESK = 20, 5
SPAN = timedelta(days=730)
CHUNK = 50_000  # rows per COPY write
RECENT_SHARE = 500  # the newest 1 in 500 orders are still in the maker-checker workflow
CLIENT_ORDER_ID_EVERY = 4  # one order in 4 carries its submitter's own id
# The status of an older order, with its weight: (status, weight).
SETTLED = (
    ("FILLED", 60),
    ("CANCELLED", 18),
    ("REJECTED", 12),
    ("PARTIALLY_FILLED", 4),
    ("APPROVED", 5),
    ("REVIEWED", 0.6),
    ("PENDING", 0.4),
)
IN_FLIGHT = (("PENDING", 50), ("REVIEWED", 30), ("APPROVED", 15), ("CANCELLED", 3), ("REJECTED", 2))
NULL = "\\N"  # in COPY's text format
COLUMNS = (
    "desk_id, client_id, instrument_id, side, order_type, time_in_force, quantity, price,"
    " currency, status, risk_status, filled_quantity, avg_fill_price, created_by, reviewed_by,"
    " approved_by, rejected_by, version, created_at, updated_at, client_order_id"
)

# What the orders' triggers check for each row (migrations 0001 and 0011), for the new rows.
TRIGGER_RULES = {
    "instrument and client rules": (
        "SELECT count(*) FROM orders o JOIN instruments i ON i.id = o.instrument_id"
        " JOIN clients c ON c.id = o.client_id WHERE o.id > %(after)s AND ("
        " mod(o.quantity, i.lot_size) <> 0 OR mod(o.price, i.tick_size) <> 0"
        " OR o.currency <> i.currency OR o.desk_id <> c.desk_id"
        " OR NOT i.active OR c.status <> 'ACTIVE')"
    ),
    "maker-checker": (
        "SELECT count(*) FROM orders WHERE id > %(after)s AND ("
        " (status IN ('APPROVED', 'PARTIALLY_FILLED', 'FILLED')"
        "  AND (risk_status <> 'PASSED' OR reviewed_by IS NULL))"
        " OR (status = 'REVIEWED' AND reviewed_by IS NULL)"
        " OR (status = 'PENDING' AND (reviewed_by IS NOT NULL OR approved_by IS NOT NULL)))"
    ),
}


@dataclass(frozen=True, slots=True)
class Book:
    """The reference rows the orders point at, by desk."""

    desk_ids: tuple[int, ...]  # BIG_DESK first
    clients: dict[int, list[int]]  # desk id → client ids that trade
    traders: dict[int, list[int]]
    approvers: dict[int, list[int]]
    instrument_ids: list[int]  # by rank: the first trades most


def default_database_url() -> str:
    configured = os.environ.get("TRADEOPS_DATABASE_URL")
    if configured:
        return configured
    server = start_embedded(ROOT / ".tradeops" / "bench-pgdata", cleanup_mode=None)
    return ensure_database(str(server.get_uri()), "tradeops_ten_million")


def _ids(conn: psycopg.Connection, sql: str, *args: object) -> list[int]:
    return [row[0] for row in conn.execute(sql, args).fetchall()]


def load_book(conn: psycopg.Connection) -> Book:
    """The bench's desks, clients, users and instruments, created once (reused on reloads)."""
    codes = (BIG_DESK, *SMALL_DESKS)
    for code in codes:
        conn.execute(
            "INSERT INTO desks (code, name) VALUES (%s, %s) ON CONFLICT (code) DO NOTHING",
            (code, f"Bench desk {code}"),
        )
    # BENCH-BIG sorts first.
    desk_ids = tuple(
        _ids(conn, "SELECT id FROM desks WHERE code = ANY(%s) ORDER BY code", list(codes))
    )
    conn.execute(
        "INSERT INTO clients (external_id, name, desk_id)"
        " SELECT 'BC-' || lpad(n::text, 5, '0'), 'Bench client ' || n,"
        "  (%s::bigint[])[1 + CASE WHEN n %% 10 < 8 THEN 0 ELSE 1 + n %% 4 END]"
        " FROM generate_series(1, %s) n ON CONFLICT (external_id) DO NOTHING",
        (list(desk_ids), CLIENTS),
    )
    conn.execute(
        "INSERT INTO instruments (symbol, name, currency, lot_size, tick_size)"
        " SELECT 'B' || lpad(n::text, 4, '0'), 'Bench instrument ' || n, 'USD', 1, 0.01"
        " FROM generate_series(1, %s) n UNION ALL SELECT %s, 'Never traded', 'USD', 1, 0.01"
        " ON CONFLICT (symbol) DO NOTHING",
        (INSTRUMENTS, UNTRADED_SYMBOL),
    )
    traders, approvers, clients = {}, {}, {}
    for desk_id in desk_ids:
        traders[desk_id] = _desk_users(conn, desk_id, "trader", TRADERS_PER_DESK)
        approvers[desk_id] = _desk_users(conn, desk_id, "approver", APPROVERS_PER_DESK)
        trading = _ids(
            conn,
            "SELECT id FROM clients WHERE desk_id = %s AND external_id LIKE 'BC-%%' ORDER BY id",
            desk_id,
        )
        clients[desk_id] = trading[:-IDLE_CLIENTS_PER_DESK]
    instrument_ids = _ids(
        conn, "SELECT id FROM instruments WHERE symbol ~ '^B[0-9]{4}$' ORDER BY symbol"
    )
    return Book(desk_ids, clients, traders, approvers, instrument_ids)


def _desk_users(conn: psycopg.Connection, desk_id: int, role: str, count: int) -> list[int]:
    conn.execute(
        "INSERT INTO users (email, name, role) SELECT format('%%s%%s@desk%%s.bench.test', %s::text,"
        " n, %s::bigint), 'Bench ' || %s || ' ' || n, %s FROM generate_series(1, %s) n"
        " ON CONFLICT (email) DO NOTHING",
        (role, desk_id, role, role, count),
    )
    ids = _ids(
        conn,
        "SELECT id FROM users WHERE email LIKE %s ORDER BY id",
        f"{role}%@desk{desk_id}.bench.test",
    )
    conn.execute(
        "INSERT INTO desk_members (user_id, desk_id) SELECT unnest(%s::bigint[]), %s"
        " ON CONFLICT DO NOTHING",
        (ids, desk_id),
    )
    return ids


def _cumulative(weights: Sequence[float]) -> list[float]:
    return list(itertools.accumulate(weights))


class OrderRows:
    """Order rows as COPY text lines, oldest first; every rule of the orders table holds."""

    def __init__(self, book: Book, rows: int, seed: int, after: int = 0) -> None:
        """`after`: the largest order id before the load, which numbers the client_order_ids
        past every earlier load's."""
        self.book, self.rows, self.after = book, rows, after
        self.random = random.Random(seed)
        self.end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        self.step = SPAN / rows
        self.symbols = _cumulative([1 / rank**SYMBOL_SKEW for rank in range(1, INSTRUMENTS + 1)])
        self.settled = ([s for s, _ in SETTLED], _cumulative([w for _, w in SETTLED]))
        self.in_flight = ([s for s, _ in IN_FLIGHT], _cumulative([w for _, w in IN_FLIGHT]))

    def _pick(self, choices: tuple[list[str], list[float]]) -> str:
        names, cumulative = choices
        return names[bisect.bisect(cumulative, self.random.random() * cumulative[-1])]

    def line(self, n: int) -> str:
        rnd, book = self.random, self.book
        desk = book.desk_ids[0] if rnd.random() < BIG_DESK_SHARE else rnd.choice(book.desk_ids[1:])
        clients = book.clients[desk]
        # Half the orders from any client, half from a few busy ones.
        busy = min(int((rnd.paretovariate(1.0) - 1) * 20), len(clients) - 1)
        client = clients[busy] if rnd.random() < 0.5 else rnd.choice(clients)
        rank = bisect.bisect(self.symbols, rnd.random() * self.symbols[-1])
        instrument = book.instrument_ids[min(rank, INSTRUMENTS - 1)]
        maker, checker = rnd.choice(book.traders[desk]), rnd.choice(book.approvers[desk])
        recent = n >= self.rows - self.rows // RECENT_SHARE
        status = self._pick(self.in_flight if recent else self.settled)
        quantity = 100 * rnd.randint(1, 50)
        limit = rnd.random() < 0.8
        price = f"{rnd.randint(100, 99_999) / 100:.2f}" if limit else NULL
        created = self.end - (self.rows - n) * self.step
        return "\t".join(
            (
                str(desk),
                str(client),
                str(instrument),
                rnd.choice(("BUY", "SELL")),
                "LIMIT" if limit else "MARKET",
                "DAY" if rnd.random() < 0.7 else "GTC",
                str(quantity),
                price,
                "USD",
                status,
                *self._decision(status, quantity, price, maker, checker),
                created.isoformat(),
                (created + timedelta(minutes=rnd.randint(0, 600))).isoformat(),
                # From the row's number, drawing nothing: the other columns stay as they were.
                f"BX-{self.after + n + 1}" if n % CLIENT_ORDER_ID_EVERY == 0 else NULL,
            )
        )

    def _decision(
        self, status: str, quantity: int, price: str, maker: int, checker: int
    ) -> tuple[str, ...]:
        """risk_status, filled_quantity, avg_fill_price, created_by, reviewed_by,
        approved_by, rejected_by, version: what the order's workflow left on it. The
        checker (an approver of the desk) is never the maker (a trader)."""
        checked = "FAILED" if self.random.random() < 0.02 else "PASSED"
        fill_price = price if price != NULL else "100.00"
        m, c = str(maker), str(checker)
        match status:
            case "PENDING":
                risk = "PENDING" if self.random.random() < 0.5 else checked
                return (risk, "0", NULL, m, NULL, NULL, NULL, "1")
            case "REVIEWED":
                return (checked, "0", NULL, m, c, NULL, NULL, "2")
            case "APPROVED":
                return ("PASSED", "0", NULL, m, c, c, NULL, "3")
            case "PARTIALLY_FILLED":
                return ("PASSED", str(quantity // 2), fill_price, m, c, c, NULL, "4")
            case "FILLED":
                return ("PASSED", str(quantity), fill_price, m, c, c, NULL, "5")
            case "REJECTED":
                risk = "FAILED" if self.random.random() < 0.3 else "PASSED"
                return (risk, "0", NULL, m, c, NULL, c, "3")
            case _:  # CANCELLED, before any fill
                return ("PASSED", "0", NULL, m, NULL, NULL, NULL, "2")

    def chunks(self) -> Iterator[str]:
        for start in range(0, self.rows, CHUNK):
            lines = [self.line(n) for n in range(start, min(start + CHUNK, self.rows))]
            yield "\n".join(lines) + "\n"


def _definitions(conn: psycopg.Connection) -> tuple[list[str], list[tuple[str, str]]]:
    """The orders' plain indexes (CREATE statements) and foreign keys (name, definition):
    rebuilt after the COPY. Indexes behind a constraint (primary key, unique) stay."""
    indexes = [
        row[0]
        for row in conn.execute(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i"
            " WHERE i.indrelid = 'orders'::regclass AND NOT EXISTS"
            " (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)"
        ).fetchall()
    ]
    foreign_keys = [
        (row[0], row[1])
        for row in conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'orders'::regclass AND contype = 'f'"
        ).fetchall()
    ]
    return indexes, foreign_keys


def _index_name(create_index: str) -> str:
    """The name in CREATE [UNIQUE] INDEX <name> ON ..."""
    words = create_index.split()
    return words[words.index("INDEX") + 1]


def load_orders(conn: psycopg.Connection, rows: int, seed: int) -> int:
    """COPY `rows` orders in one transaction; returns the id they start after."""
    book = load_book(conn)
    after = conn.execute("SELECT coalesce(max(id), 0) FROM orders").fetchone()[0]  # type: ignore[index]
    indexes, foreign_keys = _definitions(conn)
    conn.execute("ALTER TABLE orders DISABLE TRIGGER USER")
    for name, _ in foreign_keys:
        conn.execute(f'ALTER TABLE orders DROP CONSTRAINT "{name}"')
    for statement in indexes:
        conn.execute(f"DROP INDEX {_index_name(statement)}")
    started = time.monotonic()
    with conn.cursor().copy(f"COPY orders ({COLUMNS}) FROM STDIN") as copy:
        for done, chunk in enumerate(OrderRows(book, rows, seed, after).chunks(), start=1):
            copy.write(chunk)
            if done % 20 == 0:
                _progress(f"{done * CHUNK:,} rows", started)
    _progress(f"COPY of {rows:,} rows", started)
    for statement in indexes:
        conn.execute(statement)
    for name, definition in foreign_keys:
        conn.execute(f'ALTER TABLE orders ADD CONSTRAINT "{name}" {definition}')
    _progress("indexes and foreign keys rebuilt", started)
    for rule, sql in TRIGGER_RULES.items():
        broken = conn.execute(sql, {"after": after}).fetchone()[0]  # type: ignore[index]
        if broken:
            raise SystemExit(f"{broken} generated orders break the {rule}: rolled back")
    conn.execute("ALTER TABLE orders ENABLE TRIGGER USER")
    return int(after)


def _progress(what: str, started: float) -> None:
    print(f"  {what}: {time.monotonic() - started:,.0f} s", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=int(os.environ.get("ROWS", "1000000")))
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args(argv)
    url = default_database_url()
    migrate.upgrade(url)
    print(f"generating {args.rows:,} orders into {url.rsplit('@', 1)[-1]}", flush=True)
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        after = load_orders(conn, args.rows, args.seed)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        started = time.monotonic()
        conn.execute("VACUUM (ANALYZE) orders")  # statistics and the visibility map
        _progress("VACUUM ANALYZE", started)
        total = conn.execute("SELECT count(*) FROM orders").fetchone()[0]  # type: ignore[index]
    print(f"orders: {total:,} (new ids after {after})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
