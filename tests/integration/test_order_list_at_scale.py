"""GET /orders at scale (issue 14): every filter reads its index, filters resolve their names
to ids first, a filter the list lacks is refused, and bench/data.py's orders are valid.

The plans are EXPLAINed as the application runs the query: as tradeops_app with a desk's
context, so row-level security's desk predicate is in them, over orders from the benchmark's
generator (the same skew as its ten million, fewer rows) with fresh statistics.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from bench.data import BIG_DESK, SMALL_DESKS, UNTRADED_SYMBOL, load_orders
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tests.conftest import TEMPLATE_ENV, copy_database, create_database, drop_database
from tests.factories import SEED_ORDER, Cast, pass_risk_check
from tests.owner import driver_of, owner_engine_on
from tradeops.auth.principal import Principal, Role
from tradeops.db import migrate
from tradeops.db.prepared import prepare
from tradeops.db.uow import UnitOfWork
from tradeops.orders import repository, service
from tradeops.orders.schemas import OrderFilters

ROWS = 40_000
ORDERS = "/api/v1/orders"


def _orders_scans(plan: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    """How the plan reads the orders table: (node type, index name) of each read; a bitmap
    heap scan by the index its bitmap comes from."""
    if plan.get("Relation Name") == "orders":
        if plan["Node Type"] == "Bitmap Heap Scan":
            yield from _bitmap_indexes(plan)
        else:
            yield plan["Node Type"], plan.get("Index Name")
    for child in plan.get("Plans", []):
        yield from _orders_scans(child)


def _bitmap_indexes(plan: dict[str, Any]) -> Iterator[tuple[str, str | None]]:
    """The indexes a bitmap heap scan's bitmap is made of (through BitmapAnd and BitmapOr)."""
    for child in plan.get("Plans", []):
        if child["Node Type"] == "Bitmap Index Scan":
            yield child["Node Type"], child["Index Name"]
        else:
            yield from _bitmap_indexes(child)


@pytest.fixture(scope="module")
def scale_database(postgres_server_url: str) -> Iterator[str]:
    """A database of this module's own with the generated orders: the plans depend on the
    statistics, which no earlier test's orders (nor their dead rows) may skew. Statistics of
    every row, not a sample: the same plans on every run."""
    template = os.environ.get(TEMPLATE_ENV)
    url = copy_database(postgres_server_url, template) if template else None
    if url is None:
        url = create_database(postgres_server_url)
        migrate.upgrade(url)
    try:
        with psycopg.connect(url) as conn:
            load_orders(conn, ROWS, seed=14)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET default_statistics_target = 1000")
            conn.execute("VACUUM (ANALYZE)")
        yield url
    finally:
        drop_database(postgres_server_url, url)


@pytest.fixture
async def scale_engine(scale_database: str) -> AsyncIterator[AsyncEngine]:
    engine = owner_engine_on(scale_database, pool_size=1)
    yield engine
    await engine.dispose()


@pytest.fixture
async def connection(scale_engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with scale_engine.connect() as conn, conn.begin() as tx:
        yield conn
        await tx.rollback()


async def _approver_of(conn: AsyncConnection, desk: str) -> Principal:
    row = (
        await conn.execute(
            text(
                "SELECT min(u.id) AS id, d.id AS desk FROM users u"
                " JOIN desk_members m ON m.user_id = u.id JOIN desks d ON d.id = m.desk_id"
                " WHERE d.code = :desk AND u.role = 'approver' GROUP BY d.id"
            ),
            {"desk": desk},
        )
    ).one()
    return Principal(row.id, f"approver{row.id}@bench.test", Role.APPROVER, frozenset({row.desk}))


async def _plan(conn: AsyncConnection, principal: Principal, **filters: Any) -> dict[str, Any]:
    """The plan of the list's query for these filters, as the application would run it."""
    uow = UnitOfWork(await driver_of(conn))
    await uow.set_context(principal, "explain")  # SET ROLE tradeops_app and the desks
    after = filters.pop("after", None)
    wanted = OrderFilters(**filters)
    keys = await service.list_filter_keys(uow, principal, wanted)
    assert keys is not None, f"{wanted} resolved to nothing"
    statement = prepare(repository.filtered_orders(principal, wanted, keys, after=after, limit=51))
    raw = await uow.driver.fetchval(
        "EXPLAIN (FORMAT JSON) " + statement.sql, *statement.arguments({})
    )
    plan: dict[str, Any] = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    await conn.execute(text("RESET ROLE"))
    return plan


async def _plan_in_one_statement(
    conn: AsyncConnection, principal: Principal, **filters: Any
) -> dict[str, Any]:
    """The plan of the page's statement for these filters, as GET /orders in one statement
    runs it (migration 0041): tradeops_order_page called as tradeops_app with the desks'
    context, its nested statement's plan as auto_explain writes it."""
    driver = await driver_of(conn)
    await driver.execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
        " SET auto_explain.log_nested_statements = on; SET auto_explain.log_format = json;"
        " SET auto_explain.log_level = notice"
    )
    plans: list[str] = []

    def noted(_: object, message: Any) -> None:
        plans.append(message.message)

    driver.add_log_listener(noted)
    uow = UnitOfWork(driver)
    await uow.set_context(principal, "explain")
    after = filters.pop("after", None) or ()
    wanted = OrderFilters(**filters)
    await driver.fetchval(
        "SELECT more FROM tradeops_order_page($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,"
        " $12, $13, 50)",
        principal.all_desks,
        list(principal.desk_ids),
        wanted.status,
        wanted.risk_status,
        wanted.client_id,
        wanted.symbol,
        wanted.side,
        wanted.client_order_id,
        wanted.desk,
        wanted.created_from,
        wanted.created_to,
        after[0] if len(after) == 2 else None,
        after[-1] if after else None,
    )
    await driver.execute("RESET ROLE; RESET auto_explain.log_level")
    driver.remove_log_listener(noted)
    (page,) = [
        json.loads(plan.split("plan:", 1)[1])
        for plan in plans
        if '"SELECT array(SELECT o.id FROM orders o' in plan
    ]
    found: dict[str, Any] = page["Plan"]
    return found


@pytest.mark.parametrize("planned", [_plan, _plan_in_one_statement], ids=["uow", "one statement"])
async def test_each_filter_reads_its_index_as_the_application_role(
    connection: AsyncConnection,
    planned: Callable[..., Awaitable[dict[str, Any]]],
) -> None:
    await connection.execute(text("SELECT 1"))
    big = await _approver_of(connection, BIG_DESK)
    small = await _approver_of(connection, SMALL_DESKS[0])
    busiest = await connection.scalar(
        text(
            "SELECT c.external_id FROM clients c JOIN orders o ON o.client_id = c.id"
            " GROUP BY c.external_id ORDER BY count(*) DESC LIMIT 1"
        )
    )
    own_id = await connection.scalar(
        text(
            "SELECT o.client_order_id FROM orders o JOIN desks d ON d.id = o.desk_id"
            " WHERE d.code = :big AND o.client_order_id IS NOT NULL ORDER BY o.id LIMIT 1"
        ),
        {"big": BIG_DESK},
    )
    now = datetime.now(UTC)
    window = {"created_from": now - timedelta(days=600), "created_to": now - timedelta(days=599)}
    # Every order of the desk, newest first: by id, or by (id, desk_id) with the desk in it.
    newest = {"ix_orders_desk_id_id", "pk_orders", "uq_orders_id_desk_id"}
    cases: list[tuple[str, Principal, dict[str, Any], set[str]]] = [
        ("page 1", big, {}, newest),
        ("client", big, {"client_id": busiest}, {"ix_orders_client_id_id"}),
        # A fifth of all orders: found as soon walking newest first, as the plain list.
        ("most traded symbol", big, {"symbol": "B0001"}, {"ix_orders_instrument_id_id", *newest}),
        ("symbol", big, {"symbol": "B0100"}, {"ix_orders_instrument_id_id"}),
        ("rare symbol", big, {"symbol": "B5000"}, {"ix_orders_instrument_id_id"}),
        ("status", big, {"status": "REVIEWED"}, {"ix_orders_desk_id_status_id"}),
        ("risk status", big, {"risk_status": "FAILED"}, {"ix_orders_desk_id_risk_status_id"}),
        ("desk", big, {"desk": BIG_DESK}, newest),
        ("created, one day", big, window, {"ix_orders_created_at_id"}),
        (
            "created since",
            big,
            {"created_from": window["created_from"]},
            {"ix_orders_created_at_id"},
        ),
        (
            "created with a cursor",
            big,
            {**window, "after": (window["created_to"], ROWS)},
            {"ix_orders_created_at_id"},
        ),
        # Half the orders each, BUY or SELL: no index of its own would read fewer rows than
        # walking the desk's orders newest first, the other side filtered out (about two rows
        # read per row listed, on any page).
        ("side", big, {"side": "SELL"}, newest),
        ("side with a cursor", big, {"side": "BUY", "after": (ROWS // 2,)}, newest),
        ("client order id", big, {"client_order_id": own_id}, {"ix_orders_client_order_id_id"}),
        (
            "unknown client order id",
            big,
            {"client_order_id": "NO-SUCH"},
            {"ix_orders_client_order_id_id"},
        ),
        ("small desk", small, {}, newest),
        ("small desk side", small, {"side": "BUY"}, newest),
        ("small desk status", small, {"status": "REVIEWED"}, {"ix_orders_desk_id_status_id"}),
        (
            "small desk symbol",
            small,
            {"symbol": "B0100"},
            {"ix_orders_instrument_id_id", "ix_orders_desk_id_id"},  # alone or ANDed
        ),
    ]
    used, wrong = {}, {}
    for name, principal, filters, expected in cases:
        scans = list(_orders_scans(await planned(connection, principal, **filters)))
        used[name] = scans
        if not scans or any(index not in expected for _, index in scans):
            wrong[name] = used[name]
    assert not wrong, {"wrong": wrong, "all": used}
    assert all("Seq Scan" not in str(plans) for plans in used.values()), used


async def test_generated_orders_satisfy_every_constraint_and_trigger_rule(
    scale_engine: AsyncEngine,
) -> None:
    """The load re-validated the foreign keys and the triggers' rules (bench/data.py); the
    checks held row by row in the COPY. Here: the shape the benchmark relies on."""
    async with scale_engine.connect() as conn:
        shape = (
            await conn.execute(
                text(
                    "SELECT count(*) AS orders,"
                    " count(*) FILTER (WHERE d.code = :big) AS on_big_desk,"
                    " count(DISTINCT o.instrument_id) AS symbols,"
                    " max(o.created_at) - min(o.created_at) AS span,"
                    " (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass"
                    "   AND NOT tgisinternal AND tgenabled = 'D') AS disabled_triggers,"
                    " (SELECT count(*) FROM orders o2 JOIN instruments i ON i.id = o2.instrument_id"
                    "   WHERE i.symbol = :none) AS untraded"
                    " FROM orders o JOIN desks d ON d.id = o.desk_id"
                ),
                {"big": BIG_DESK, "none": UNTRADED_SYMBOL},
            )
        ).one()
    assert shape.orders == ROWS
    assert 0.77 < shape.on_big_desk / ROWS < 0.83
    assert shape.symbols > 1000 and shape.span > timedelta(days=700)
    assert shape.disabled_triggers == 0 and shape.untraded == 0


async def test_unknown_query_parameter_is_a_422_naming_it(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    lists = (
        ORDERS,
        "/api/v1/audit/events",
        "/api/v1/positions",
        "/api/v1/risk/limits",
        "/api/v1/webhooks/1/deliveries",  # refused before the webhook is looked for
    )
    for path in lists:
        response = await client.get(path, params={"symbl": "AAPL"}, headers=cast["admin"])
        assert response.status_code == 422, (path, response.text)
        problem = response.json()
        assert problem["errors"][0]["field"] == "query.symbl"
        assert "symbl" in problem["detail"]
    unauthenticated = await client.get(ORDERS, params={"symbl": "AAPL"})
    assert unauthenticated.status_code == 401  # who you are is checked first


async def test_risk_status_filters_the_list(
    client: httpx.AsyncClient, cast: Cast, owner_engine: AsyncEngine
) -> None:
    first = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    second = await client.post(ORDERS, json={**SEED_ORDER, "quantity": 60}, headers=cast["trader"])
    await pass_risk_check(owner_engine, first.json()["id"])
    for risk_status, expected in (("PASSED", first), ("PENDING", second)):
        page = await client.get(
            ORDERS, params={"risk_status": risk_status}, headers=cast["approver"]
        )
        assert [o["id"] for o in page.json()["items"]] == [expected.json()["id"]]
    bad = await client.get(ORDERS, params={"risk_status": "MAYBE"}, headers=cast["approver"])
    assert bad.status_code == 422


async def test_names_resolve_to_ids_and_what_you_may_not_see_is_an_empty_page(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    created = await client.post(ORDERS, json=SEED_ORDER, headers=cast["trader"])
    order_id = created.json()["id"]
    mine = {"client_id": "CUST-1001", "symbol": "aapl", "desk": "EQ-US"}
    page = await client.get(ORDERS, params=mine, headers=cast["approver"])
    assert [o["id"] for o in page.json()["items"]] == [order_id]
    for nothing in (
        {"client_id": "NO-SUCH"},
        {"symbol": "NOSUCH"},
        {"desk": "NO-DESK"},
        {"desk": "FI-EU"},  # another desk's: not theirs to list
        {"client_id": "CUST-2001"},  # another desk's client
    ):
        page = await client.get(ORDERS, params=nothing, headers=cast["approver"])
        assert page.status_code == 200 and page.json() == {"items": [], "next_cursor": None}
    everywhere = await client.get(ORDERS, params={"desk": "EQ-US"}, headers=cast["risk"])
    assert [o["id"] for o in everywhere.json()["items"]] == [order_id]


async def test_a_created_range_pages_by_created_at_and_id(
    client: httpx.AsyncClient, cast: Cast
) -> None:
    ids = []
    for quantity in (10, 20, 30):
        created = await client.post(
            ORDERS, json={**SEED_ORDER, "quantity": quantity}, headers=cast["trader"]
        )
        ids.append(created.json()["id"])
    since = {"created_from": "2020-01-01T00:00:00Z", "limit": "1"}
    seen, cursors, after = [], [], None
    while True:
        page = await client.get(
            ORDERS,
            params={**since, **({"after": after} if after else {})},
            headers=cast["approver"],
        )
        assert page.status_code == 200, page.text
        seen += [o["id"] for o in page.json()["items"]]
        after = page.json()["next_cursor"]
        if after is None:
            break
        cursors.append(after)
    assert seen == ids[::-1]
    assert all(c.count(".") == 1 for c in cursors)  # microseconds.id
    # An id cursor is not a position in a created range, nor the other way round.
    mixed = await client.get(ORDERS, params={**since, "after": "5"}, headers=cast["approver"])
    assert mixed.status_code == 422
    back = await client.get(ORDERS, params={"after": cursors[0]}, headers=cast["approver"])
    assert back.status_code == 422
