"""The peer for the load benchmark: our order and portfolio reads and order intake on bare
Starlette + asyncpg.

No FastAPI, no SQLAlchemy, no pydantic on the request path: JSON in and out with orjson and
one SQL statement per request in autocommit. The SQL is our app's own, compiled by SQLAlchemy
once at startup (see our_sql()). Clients and instruments are looked up once, at startup.

With --same-work it does the database work our server does for the request, in the same
round trips, and nothing else: our one statement that authenticates the API key, switches to
the application role, sets the request context, and then reads (GET /orders/{id}, the
portfolio: migrations 0026 and 0019) or, for a caller who may submit orders, runs the
order's intake with the key's desks and the risk job it defers (migration 0025). That
isolates what our stack (FastAPI, pydantic, middleware, logging, metrics) costs beyond its
SQL.

With --same-work --pipelined a new order takes the road not taken before migration 0025:
the transaction's statements in two round trips on a psycopg connection in pipeline mode
(BEGIN with the authenticating statement, then the order's statement with COMMIT).
`make bench BENCH_ARGS=--two-round-trips` runs it beside the others.

    BARE_DATABASE_URL=postgresql://... python bench/bare_app.py --host 127.0.0.1 --port 8001
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import psycopg
import uvicorn
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tradeops.auth.keys import hash_key, parse_key
from tradeops.auth.permissions import Action, who_may
from tradeops.auth.repository import AUTHENTICATE
from tradeops.db.prepared import Prepared, as_row
from tradeops.db.uow import APP_ROLE
from tradeops.db.wakeups import Wakeups
from tradeops.jobs.defer import CHECK_ORDER_RISK, RISK_QUEUE
from tradeops.orders import repository as orders_repository
from tradeops.orders import service as orders_service
from tradeops.orders.repository import CREATED_FIELDS, Submitted
from tradeops.orders.schemas import OrderOut
from tradeops.positions import repository as positions_repository

# As our pool: at most pool_size + pool_max_overflow connections (run.py passes our
# Settings' values; their defaults, 6 + 0, here).
POOL_MIN_SIZE = int(os.environ.get("BARE_POOL_MIN_SIZE", "6"))
POOL_MAX_SIZE = int(os.environ.get("BARE_POOL_MAX_SIZE", "6"))
# As our engine's connect_args (application_name differs so the two can be told apart).
SERVER_SETTINGS = {
    "application_name": "tradeops-bare",
    "statement_timeout": "5000",
    "idle_in_transaction_session_timeout": "60000",
    # The actor its audit events default to (tradeops_actor()): ours publishes it per
    # transaction with the context; the bare peer, which sets none, once per session.
    "tradeops.user_id": "0",
}
SYSTEM_USER_ID = 0  # no authentication here: orders are our built-in system user's
SYSTEM_EMAIL = "system@tradeops"
ACTOR = f"user:{SYSTEM_USER_ID}"


def our_sql() -> tuple[str, list[str], str]:
    """Our SUBMIT_ORDER and the SELECT of GET /orders/{id}, exactly as our server sends them to
    asyncpg: (insert, its parameter names in $n order, select). Both carry the desk condition;
    the peer passes "all desks".
    """
    from tradeops.orders import repository as repo

    select, insert = repo.ORDER_BY_ID.prepared, repo.SUBMIT_ORDER.prepared
    if select.names != ("id", "all_desks", "desk_ids"):
        raise RuntimeError(f"unexpected parameters {select.names} in:\n{select.sql}")
    return insert.sql, list(insert.names), select.sql


def our_portfolio_sql() -> str:
    """Our GET /clients/{id}/portfolio statement, which answers the whole JSON document."""
    from tradeops.positions import repository as positions

    statement = positions.PORTFOLIO.prepared
    if statement.names != ("client_id", "all_desks", "desk_ids"):
        raise RuntimeError(f"unexpected parameters {statement.names} in:\n{statement.sql}")
    return statement.sql


INSERT_ORDER, INSERT_PARAMETERS, SELECT_ORDER = our_sql()
READ_ORDER = orders_repository.READ_ORDER.prepared
SUBMIT_ORDER = orders_repository.SUBMIT_IN_ONE_STATEMENT.prepared
READ_PORTFOLIO = positions_repository.READ_PORTFOLIO.prepared
ORDER_FIELDS = tuple(OrderOut.model_fields)
SELECT_PORTFOLIO = our_portfolio_sql()
KNOWN_PARAMETERS = {  # the ones create_order() fills
    "client_id",
    "symbol",
    "all_desks",
    "desk_ids",
    "side",
    "order_type",
    "time_in_force",
    "quantity",
    "price",
    "client_order_id",
    "created_by",
    "created_by_key_id",
    "actor",
    "event_payload",
    "request_id",
    "event_type",
    "payload",
    "action",
    "expire_at",
    "risk_queue",
    "risk_task",
}
if unknown := set(INSERT_PARAMETERS) - KNOWN_PARAMETERS:
    raise RuntimeError(f"SUBMIT_ORDER has new parameters {unknown}: teach create_order() them")

CLIENTS = (
    "SELECT c.external_id, c.id, c.desk_id, d.code FROM clients c JOIN desks d ON d.id = c.desk_id"
)
INSTRUMENTS = "SELECT symbol, id, currency FROM instruments"


@dataclass(frozen=True, slots=True)
class ClientRef:
    id: int
    desk_id: int
    desk: str


@dataclass(frozen=True, slots=True)
class InstrumentRef:
    id: int
    currency: str


def _json_default(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # as our API: 50.000000 -> "50"
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = orjson.dumps(content, default=_json_default)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def problem(status: int, detail: str) -> Response:
    return json_response({"status": status, "detail": detail}, status)


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))  # 192.55 stays 192.55


async def init_connection(connection: asyncpg.Connection) -> None:
    """As our pool: jsonb in binary (a version byte, then the text), which asyncpg can
    also decode inside a record (our one-statement read answers the order as one)."""
    await connection.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda document: b"\x01" + document.encode(),
        decoder=lambda data: orjson.loads(data[1:]),
        format="binary",
    )


async def keep_session(connection: asyncpg.Connection) -> None:
    """As our pool: no RESET ALL round trip when a connection goes back (asyncpg has already
    rolled back anything left open)."""


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    pool = await asyncpg.create_pool(
        os.environ["BARE_DATABASE_URL"],
        min_size=POOL_MIN_SIZE,
        max_size=POOL_MAX_SIZE,
        server_settings=SERVER_SETTINGS,
        init=init_connection,
        reset=keep_session,
    )
    app.state.pool = pool
    # As ours: a new order's wake-ups go after its commit, batched (migration 0027).
    app.state.wakeups = Wakeups(lambda c, p: pool.fetchval("SELECT tradeops_wake($1, $2)", c, p))
    app.state.clients = {
        r["external_id"]: ClientRef(r["id"], r["desk_id"], r["code"])
        for r in await pool.fetch(CLIENTS)
    }
    app.state.instruments = {
        r["symbol"]: InstrumentRef(r["id"], r["currency"]) for r in await pool.fetch(INSTRUMENTS)
    }
    pipelined: AsyncConnectionPool[Any] | None = None
    if app.state.pipelined:
        pipelined = AsyncConnectionPool(
            os.environ["BARE_DATABASE_URL"],
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            kwargs={
                "autocommit": True,  # the transaction is begun and committed in the pipeline
                "cursor_factory": psycopg.AsyncRawCursor,  # $n parameters, as asyncpg's
                "row_factory": dict_row,
                "prepare_threshold": 0,  # prepared at first use, as asyncpg's cache
                "options": " ".join(f"-c {k}={v}" for k, v in SERVER_SETTINGS.items()),
            },
            open=False,
        )
        await pipelined.open(wait=True)
    app.state.pipelined_pool = pipelined
    try:
        yield
    finally:
        await pool.close()
        if pipelined is not None:
            await pipelined.close()


def key_parameters(request: Request, request_id: str) -> dict[str, Any]:
    """--same-work: our authenticating statement's parameters for the bearer key."""
    credential = request.headers.get("authorization", "").removeprefix("Bearer ")
    prefix = parse_key(credential)
    if prefix is None:
        raise NotAuthenticated
    return {
        "prefix": prefix,
        "hash": hash_key(credential),
        "user_id": None,
        "email": None,
        "app_role": APP_ROLE,
        "request_id": request_id,
    }


def made_by(principal: asyncpg.Record | Mapping[str, Any]) -> dict[str, Any]:
    """--same-work: the order's parameters that name the key's user and desks."""
    return {
        "all_desks": principal["all_desks"],
        "desk_ids": principal["desk_ids"],
        "created_by": principal["user_id"],
        "created_by_key_id": principal["key_id"],
        "actor": f"user:{principal['user_id']}/key:{principal['key_id']}",
    }


class NotAuthenticated(Exception):
    pass


async def read(request: Request, method: str, sql: str, key: Any) -> Any:
    """`sql` for one order or client, by `method` (fetchrow, fetchval), for all desks, in
    autocommit (the bare peer)."""
    return await getattr(request.app.state.pool, method)(sql, key, True, [])


async def not_authenticated(request: Request, error: Exception) -> Response:
    return problem(401, "Not authenticated.")


async def create_order(request: Request) -> Response:
    try:
        body = orjson.loads(await request.body())
        client: ClientRef = request.app.state.clients[body["client_id"]]
        instrument: InstrumentRef = request.app.state.instruments[body["symbol"]]
        side = body["side"].upper()
        quantity = _decimal(body["quantity"])
        price = _decimal(body.get("price"))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ArithmeticError):
        return problem(422, "Invalid order.")
    # As ours: LIMIT unless MARKET is asked for by name, and a LIMIT order needs a price.
    order_type = str(body.get("order_type") or "LIMIT").upper()
    if (order_type == "LIMIT") != (price is not None):
        return problem(422, "Invalid order.")
    time_in_force = body.get("time_in_force") or "DAY"
    client_order_id = body.get("client_order_id")
    request_id = uuid.uuid4().hex
    parameters = {
        "client_id": body["client_id"],
        "symbol": body["symbol"],
        "all_desks": True,
        "desk_ids": [],
        "side": side,
        "order_type": order_type,
        "time_in_force": time_in_force,
        "quantity": quantity,
        "price": price,
        "client_order_id": client_order_id,
        "created_by": SYSTEM_USER_ID,
        "created_by_key_id": None,
        "actor": ACTOR,
        "event_payload": orjson.dumps({"request_id": request_id}).decode(),
        "request_id": request_id,
        "event_type": "CREATED",
        "payload": orjson.dumps({"request_id": request_id}).decode(),
        "action": "order.created",
        "expire_at": None,
        # As ours, the order's statement defers its risk check job (orders/service.py).
        "risk_queue": RISK_QUEUE,
        "risk_task": CHECK_ORDER_RISK,
    }
    created_by = SYSTEM_EMAIL
    if not request.app.state.same_work:
        row = await request.app.state.pool.fetchrow(
            INSERT_ORDER, *[parameters[name] for name in INSERT_PARAMETERS]
        )
    elif request.app.state.pipelined:
        row, created_by = await create_pipelined(request, parameters, request_id)
    else:
        # As ours: one statement authenticates, checks who may submit, and runs intake.
        intake = parameters | who_may(Action.SUBMIT_ORDER)  # its request_id the context's
        ours = await read_as_we_do(request, SUBMIT_ORDER, **intake)
        if ours["submitted"] is None:
            return problem(403, "Your role or key may not submit orders.")
        row, created_by = ours["submitted"], ours["caller"]["email"]
        if row["id"] is not None:
            submitted = as_row(row, Submitted)
            assert submitted is not None
            request.app.state.wakeups.after_commit(orders_service.wakeups_of(submitted))
    if row is None or row["id"] is None:
        return problem(409, f"client_order_id {client_order_id} was already used.")
    order = {
        **{k: row[k] for k in CREATED_FIELDS},
        "client_id": body["client_id"],
        "desk": client.desk,
        "symbol": body["symbol"],
        "side": side,
        "order_type": order_type,
        "time_in_force": time_in_force,
        "quantity": quantity,
        "price": price,
        "currency": instrument.currency,
        "avg_fill_price": None,
        "client_order_id": client_order_id,
        "created_by": created_by,
        "reviewed_by": None,
        "approved_by": None,
    }
    headers = {"Location": f"{request.url.path}/{row['id']}", "ETag": f'"{row["version"]}"'}
    return json_response(order, 201, headers)


async def create_pipelined(
    request: Request, parameters: dict[str, Any], request_id: str
) -> tuple[dict[str, Any] | None, str]:
    """--same-work --pipelined: the same statements in two round trips, psycopg's pipeline
    mode: BEGIN and our authenticating statement in one, the order's statement and COMMIT in
    the other (what issue 15 asks of a write)."""
    credential = key_parameters(request, request_id)
    pool: AsyncConnectionPool[Any] = request.app.state.pipelined_pool
    async with pool.connection() as connection:
        async with connection.pipeline():
            await connection.execute("BEGIN")
            authenticating = await connection.execute(
                AUTHENTICATE.prepared.sql, AUTHENTICATE.prepared.arguments(credential)
            )
            principal = await authenticating.fetchone()  # round trip 1: BEGIN, authenticate
            if principal is None:
                raise NotAuthenticated  # the pool rolls the transaction back
            parameters |= made_by(principal)
            inserting = await connection.execute(
                INSERT_ORDER, [parameters[name] for name in INSERT_PARAMETERS]
            )
            await connection.execute("COMMIT")
        # Round trip 2: leaving the pipeline sends the order's statement, COMMIT and a Sync.
        row = await inserting.fetchone()
    return row, principal["email"]


async def read_as_we_do(request: Request, statement: Prepared, **wanted: Any) -> asyncpg.Record:
    """--same-work: one of our one-statement reads (migration 0019) or our order intake
    (0025), which authenticates the bearer key, sets the context and reads or writes, in one
    round trip (autocommit)."""
    parameters = key_parameters(request, uuid.uuid4().hex) | wanted
    read = await request.app.state.pool.fetchrow(statement.sql, *statement.arguments(parameters))
    if read is None:
        raise NotAuthenticated
    return read


async def get_order(request: Request) -> Response:
    order_id: int = request.path_params["order_id"]
    if request.app.state.same_work:
        # Our read answers the document PostgreSQL wrote (migration 0026), sent as it is.
        ours = await read_as_we_do(request, READ_ORDER, order_id=order_id)
        if ours["document"] is None:
            return problem(404, f"No order {order_id}.")
        etag = {"ETag": f'"{ours["version"]}"'}
        return Response(ours["document"], media_type="application/json", headers=etag)
    row = await read(request, "fetchrow", SELECT_ORDER, order_id)
    if row is None:
        return problem(404, f"No order {order_id}.")
    order = {name: row[name] for name in ORDER_FIELDS}
    return json_response(order, headers={"ETag": f'"{row["version"]}"'})


async def get_portfolio(request: Request) -> Response:
    client_id: str = request.path_params["client_id"]
    if request.app.state.same_work:
        ours = await read_as_we_do(request, READ_PORTFOLIO, client_id=client_id)
        document = ours["document"]
    else:
        document = await read(request, "fetchval", SELECT_PORTFOLIO, client_id)
    if document is None:
        return problem(404, f"No client {client_id}.")
    return Response(document, media_type="application/json")


async def ready(request: Request) -> Response:
    await request.app.state.pool.fetchval("SELECT 1")
    return json_response({"status": "ok"})


app = Starlette(
    routes=[
        Route("/api/v1/orders", create_order, methods=["POST"]),
        Route("/api/v1/orders/{order_id:int}", get_order, methods=["GET"]),
        Route("/api/v1/clients/{client_id}/portfolio", get_portfolio, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
    ],
    lifespan=lifespan,
    exception_handlers={NotAuthenticated: not_authenticated},
)
# From the environment main() sets: with --workers N, each worker imports this module anew.
app.state.same_work = os.environ.get("BARE_SAME_WORK") == "1"
app.state.pipelined = os.environ.get("BARE_PIPELINED") == "1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--same-work",
        action="store_true",
        help="authenticate the bearer API key and run our statements in a transaction",
    )
    parser.add_argument(
        "--pipelined",
        action="store_true",
        help="with --same-work: a new order in two round trips (psycopg's pipeline mode)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="uvicorn workers (make bench's scaling step)"
    )
    args = parser.parse_args()
    os.environ["BARE_SAME_WORK"] = "1" if args.same_work else ""
    os.environ["BARE_PIPELINED"] = "1" if args.same_work and args.pipelined else ""
    # As `tradeops serve`: uvicorn's defaults (uvloop + httptools), no access log. The app by
    # its import name, which several workers need.
    uvicorn.run(
        "bare_app:app",
        app_dir=os.path.dirname(os.path.abspath(__file__)),
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
    )


if __name__ == "__main__":
    main()
