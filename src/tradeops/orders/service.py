"""Order intake and reads. Every rule here is also a constraint or trigger in PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import orjson

from tradeops.auth.authentication import principal_found
from tradeops.auth.key_usage import KeyUsage
from tradeops.auth.permissions import Action, authorize, who_may
from tradeops.auth.principal import Principal, Role
from tradeops.db.uow import ConnectionSource, UnitOfWork, Wakeup, one_statement, one_write
from tradeops.errors import Conflict, InvalidRequest, NotFound
from tradeops.idempotency.service import StoredResponse
from tradeops.jobs.defer import CHECK_ORDER_RISK, RISK_QUEUE, job_wakeups
from tradeops.orders import repository as repo
from tradeops.orders.repository import ListFilterKeys, ListKey, Submitted
from tradeops.orders.schemas import OrderCreate, OrderFilters, OrderOut, OrderPage, OrderQuery
from tradeops.orders.stream import event_wakeup
from tradeops.pagination import (
    decode_cursor,
    decode_id_cursor,
    encode_cursor,
    instant_key,
    key_instant,
)


class OrderNotFound(NotFound):
    slug = "order-not-found"
    title = "Order not found"


class DuplicateClientOrderId(Conflict):
    slug = "duplicate-client-order-id"
    title = "Duplicate client_order_id"


class AmbiguousClientOrderId(Conflict):
    slug = "ambiguous-client-order-id"
    title = "Several makers on your desks used this client_order_id"


def _decimal_places(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _is_multiple(value: Decimal, step: Decimal) -> bool:
    return value % step == 0


def check_order_rules(order: OrderCreate, refs: Submitted) -> None:
    """The rules that need the client and instrument rows; each failure names its field."""
    if refs.client_pk is None:
        raise InvalidRequest(f"Unknown client {order.client_id}.", field="client_id")
    if refs.client_status != "ACTIVE":
        raise InvalidRequest(f"Client {order.client_id} is not active.", field="client_id")
    if refs.instrument_pk is None:
        raise InvalidRequest(f"Unknown symbol {order.symbol}.", field="symbol")
    if not refs.instrument_active:
        raise InvalidRequest(f"Instrument {order.symbol} is not active.", field="symbol")
    assert refs.lot_size is not None and refs.tick_size is not None
    check_steps(order.quantity, order.price, lot_size=refs.lot_size, tick_size=refs.tick_size)


def check_steps(
    quantity: Decimal, price: Decimal | None, *, lot_size: Decimal, tick_size: Decimal
) -> None:
    """An order's quantity is in lots and its price in ticks of its instrument."""
    if not _is_multiple(quantity, lot_size):
        raise InvalidRequest(
            f"Quantity must be a multiple of the lot size {lot_size.normalize():f}.",
            field="quantity",
        )
    if price is not None and not _is_multiple(price, tick_size):
        raise InvalidRequest(
            f"Price must be a multiple of the tick size {tick_size.normalize():f}.", field="price"
        )


def check_expire_at(expire_at: datetime | None) -> None:
    if expire_at is not None and expire_at <= datetime.now(UTC):
        raise InvalidRequest("expire_at must be in the future.", field="expire_at")


def check_price_places(price: Decimal | None, price_max_decimals: int) -> None:
    if price is not None and _decimal_places(price) > price_max_decimals:
        raise InvalidRequest(
            f"Price may have at most {price_max_decimals} decimal places.", field="price"
        )


@dataclass(frozen=True, slots=True)
class Submission:
    order: OrderOut
    created: bool  # False: a retry, answered with the order recorded under its client_order_id


async def submit_order(
    uow: UnitOfWork, principal: Principal, order: OrderCreate, *, price_max_decimals: int = 6
) -> Submission:
    """Record a new order as PENDING; it then waits for review and a person's approval.

    A repeated client_order_id is a retry when the order is the same (every transport answers
    the order recorded then) and a conflict when it is not."""
    authorize(principal, Action.SUBMIT_ORDER)
    check_before_intake(order, price_max_decimals)
    row = await uow.row(
        repo.RECORD_ORDER,
        intake_values(order, uow.request_id)
        | {
            "all_desks": principal.all_desks,
            "desk_ids": list(principal.desk_ids),
            "created_by": principal.user_id,
            "created_by_key_id": principal.api_key_id,
        },
    )
    assert row is not None  # the references row always comes back
    if row.id is None:
        return Submission(await _recorded_before(uow, principal, order, row), created=False)
    uow.wake_after_commit(wakeups_of(row))  # its statement's triggers sent none (0028)
    return Submission(_created(principal, order, row), created=True)


def intake_values(order: OrderCreate, request_id: str | None) -> dict[str, Any]:
    """SUBMIT_ORDER's values that are not the caller's: the order's, and its event's."""
    return {
        "client_id": order.client_id,
        "symbol": order.symbol,
        "side": order.side,
        "order_type": order.order_type,
        "time_in_force": order.time_in_force,
        "expire_at": order.expire_at,
        "quantity": order.quantity,
        "price": order.price,
        "client_order_id": order.client_order_id,
        "event_type": "CREATED",
        "payload": orjson.dumps({"request_id": request_id}).decode(),
        "action": "order.created",
        # The risk check is queued in the order's own statement: no order without it,
        # nor a check without its order.
        "risk_queue": RISK_QUEUE,
        "risk_task": CHECK_ORDER_RISK,
    }


def check_before_intake(order: OrderCreate, price_max_decimals: int) -> None:
    """The rules intake checks before writing, past the request's own validation (422)."""
    check_price_places(order.price, price_max_decimals)
    check_expire_at(order.expire_at)


def fits_intake(order: OrderCreate, price_max_decimals: int) -> bool:
    """Whether the order passes check_before_intake (for the one statement, which would
    answer its 422 ahead of a 401 or a 403 otherwise)."""
    try:
        check_before_intake(order, price_max_decimals)
    except InvalidRequest:
        return False
    return True


async def submit_in_one_statement(
    source: ConnectionSource, credential: Mapping[str, Any], order: OrderCreate, key_usage: KeyUsage
) -> tuple[Principal, Submitted | None]:
    """POST /orders in one round trip (repo.SUBMIT_IN_ONE_STATEMENT): the caller the
    credential (auth.authentication.credential_parameters) names, 401 if none, and what
    intake returned, None when the caller may not submit orders (nothing was written).
    `recorded_alone` then tells the caller what it may know. For an order that passed
    fits_intake."""
    read = await one_write(source, repo.SUBMIT_IN_ONE_STATEMENT, _intake_alone(credential, order))
    principal = principal_found(None if read is None else read.caller, key_usage)
    return principal, None if read is None else read.submitted


async def submit_once_in_one_statement(
    source: ConnectionSource,
    credential: Mapping[str, Any],
    order: OrderCreate,
    once: Mapping[str, str],
    key_usage: KeyUsage,
) -> tuple[Principal, repo.SubmittedOnce | None]:
    """POST /orders with an Idempotency-Key in one round trip
    (repo.SUBMIT_ONCE_IN_ONE_STATEMENT): the caller, 401 if none, and what the statement
    answered. `once`: the key, the request's fingerprint and the path of the Location. An
    order intake does not record raises db.http.NOT_RECORDED_ALONE, with nothing written."""
    params = _intake_alone(credential, order) | dict(once)
    read = await one_write(source, repo.SUBMIT_ONCE_IN_ONE_STATEMENT, params)
    principal = principal_found(None if read is None else read.caller, key_usage)
    return principal, read


def answered_once(principal: Principal, read: repo.SubmittedOnce | None) -> StoredResponse | None:
    """The response submit_once_in_one_statement answered; 403 for a caller who may not
    submit orders; None when the key is another request's (nothing was written), which
    submit_order, in a transaction, refuses."""
    authorize(principal, Action.SUBMIT_ORDER)
    return stored_response(read)


def stored_response(read: repo.AnsweredOnce | None) -> StoredResponse | None:
    """The response a write with an Idempotency-Key in one statement answered, made or
    replayed; None when it answered none (the key is another request's)."""
    if read is None or read.status is None or read.body is None or read.headers is None:
        return None
    return StoredResponse(read.status, read.body, read.headers, replayed=bool(read.replayed))


def _intake_alone(credential: Mapping[str, Any], order: OrderCreate) -> dict[str, Any]:
    """A one-statement intake's parameters: the credential, the rule of who may submit
    orders (auth.permissions), and the order's values."""
    values = intake_values(order, credential["request_id"] or None)
    return {**credential, **who_may(Action.SUBMIT_ORDER), **values}


def recorded_alone(
    principal: Principal, order: OrderCreate, submitted: Submitted | None
) -> OrderOut | None:
    """The order submit_in_one_statement recorded, as the API shows it; 403 for a caller
    who may not submit orders; None when it recorded nothing (a retry under the
    client_order_id, or a refusal), which submit_order, in a transaction, explains."""
    authorize(principal, Action.SUBMIT_ORDER)
    if submitted is None:  # the function and auth.permissions disagree: never answer
        raise RuntimeError("the database refused a caller allowed to submit orders")
    if submitted.id is None:
        return None
    return _created(principal, order, submitted)


def wakeups_of(submitted: Submitted) -> list[Wakeup]:
    """What a new order wakes once committed: the event streams (its event) and the risk
    workers (its job). Intake's triggers send nothing at the commit (migrations 0027 and
    0028): the caller hands these over to be sent after it (db/wakeups.py)."""
    assert submitted.id is not None and submitted.desk_id is not None
    assert submitted.risk_job_id is not None  # queued in the order's own statement
    order = event_wakeup(submitted.id, submitted.desk_id)
    return [order, *job_wakeups(RISK_QUEUE, submitted.risk_job_id)]


def _created(principal: Principal, order: OrderCreate, row: Submitted) -> OrderOut:
    """The new order as the API shows it, from what intake sent and what it returned."""
    return OrderOut.model_validate(
        {field: getattr(row, field) for field in repo.CREATED_FIELDS}
        | {
            "client_id": order.client_id,
            "desk": row.desk,
            "symbol": order.symbol,
            "side": order.side,
            "order_type": order.order_type,
            "time_in_force": order.time_in_force,
            "quantity": order.quantity,
            "price": order.price,
            "currency": row.currency,
            "avg_fill_price": None,
            "client_order_id": order.client_order_id,
            "created_by": principal.email,
            "reviewed_by": None,
            "approved_by": None,
            "approvals": [],
        }
    )


def _same_order(recorded: OrderOut, asked: OrderCreate) -> bool:
    return (
        recorded.client_id == asked.client_id
        and recorded.symbol == asked.symbol
        and recorded.side == asked.side
        and recorded.order_type == asked.order_type
        and recorded.time_in_force == asked.time_in_force
        and (asked.time_in_force != "GTD" or recorded.expire_at == asked.expire_at)
        and recorded.quantity == asked.quantity
        and recorded.price == asked.price
    )


async def _recorded_before(
    uow: UnitOfWork, principal: Principal, order: OrderCreate, row: Submitted
) -> OrderOut:
    """Nothing was inserted: name the rule that failed, or answer the order recorded under
    this client_order_id when it is this order (a retry), or refuse a different one."""
    # A client on another desk is unknown to this principal, never "forbidden": no existence leak.
    if row.desk_id is not None and not principal.can_see_desk(row.desk_id):
        row = replace(row, client_pk=None)
    check_order_rules(order, row)
    # The submitter's own order, read as intake answered it (so without needing orders:read).
    recorded = await uow.row(
        repo.ORDER_BY_CLIENT_ORDER_ID,
        {"created_by": principal.user_id, "client_order_id": order.client_order_id},
    )
    if recorded is not None and _same_order(recorded, order):
        return recorded
    existing_id = None if recorded is None else recorded.id
    raise DuplicateClientOrderId(
        f"client_order_id {order.client_order_id} was already used for order {existing_id}.",
        existing_order_id=existing_id,
    )


async def get_order(uow: UnitOfWork, principal: Principal, order_id: int) -> OrderOut:
    authorize(principal, Action.READ_ORDERS)
    order = await uow.row(
        repo.ORDER_BY_ID,
        {"id": order_id, "all_desks": principal.all_desks, "desk_ids": list(principal.desk_ids)},
    )
    return shown_order(principal, order, order_id)


async def read_order(
    source: ConnectionSource, credential: Mapping[str, Any], order_id: int, key_usage: KeyUsage
) -> tuple[Principal, repo.OrderDocument | None]:
    """GET /orders/{id} in one round trip: the caller the credential (auth.authentication.
    credential_parameters) names, 401 if none, and the order's document if they can see it.
    The caller decides with shown_order, once it has routed the request (a read replica
    sends a caller who wrote lately to the primary before any answer)."""
    read = await one_statement(source, repo.READ_ORDER, {**credential, "order_id": order_id})
    principal = principal_found(None if read is None else read.caller, key_usage)
    return principal, None if read is None else read.found


async def read_own_order(
    source: ConnectionSource,
    credential: Mapping[str, Any],
    client_order_id: str,
    key_usage: KeyUsage,
) -> tuple[Principal, repo.OrderDocument | None]:
    """GET /orders:by_client_order_id in one round trip (repo.READ_OWN_ORDER): the caller
    the credential names, 401 if none, and their own order under `client_order_id` if it is
    on their desks; None when they have none, which get_order_by_client_order_id, in a
    transaction, answers (404, or an approver's order of their desks)."""
    params = {**credential, "client_order_id": client_order_id}
    read = await one_statement(source, repo.READ_OWN_ORDER, params)
    principal = principal_found(None if read is None else read.caller, key_usage)
    return principal, None if read is None else read.found


def shown_own_order(
    principal: Principal, order: repo.OrderDocument | None
) -> repo.OrderDocument | None:
    """The caller's own order read for them, if they may read orders."""
    authorize(principal, Action.READ_ORDERS)
    return order


Shown = TypeVar("Shown")


def shown_order(principal: Principal, order: Shown | None, order_id: int) -> Shown:
    """The order read for `principal`, if they may read orders and it was found."""
    authorize(principal, Action.READ_ORDERS)
    if order is None:
        raise OrderNotFound(f"No order {order_id}.")
    return order


async def get_order_by_client_order_id(
    uow: UnitOfWork, principal: Principal, client_order_id: str
) -> OrderOut:
    """The caller's own order under their client_order_id; for an approver, failing that, the
    one order of their desks under it (client_order_ids are unique per maker, not per desk)."""
    authorize(principal, Action.READ_ORDERS)
    own = await uow.row(
        repo.ORDER_BY_CLIENT_ORDER_ID,
        {"created_by": principal.user_id, "client_order_id": client_order_id},
    )
    if own is not None:
        return own
    if principal.role is not Role.APPROVER:
        raise OrderNotFound(f"You have no order with client_order_id {client_order_id}.")
    wanted = OrderFilters(client_order_id=client_order_id)
    found = await uow.rows_of(
        repo.filtered_orders(principal, wanted, ListFilterKeys(), after=None, limit=10), OrderOut
    )
    if not found:
        raise OrderNotFound(f"No order of your desks has client_order_id {client_order_id}.")
    if len(found) > 1:
        raise AmbiguousClientOrderId(
            f"Orders {', '.join(str(o.id) for o in found)} of different makers use "
            f"client_order_id {client_order_id}; list them with the client_order_id filter.",
            order_ids=[o.id for o in found],
        )
    return found[0]


async def list_orders(uow: UnitOfWork, principal: Principal, wanted: OrderQuery) -> OrderPage:
    """Newest first; keyset pagination, so pages stay stable while orders keep arriving.
    With a created range newest first is by (created_at, id), and so is the cursor
    (repository.filtered_orders says why)."""
    authorize(principal, Action.READ_ORDERS)
    filters = wanted.filters
    after = list_after(wanted)
    keys = await list_filter_keys(uow, principal, filters)
    if keys is None:
        return OrderPage(items=[], next_cursor=None)
    statement = repo.filtered_orders(principal, filters, keys, after=after, limit=wanted.limit + 1)
    rows = await uow.rows_of(statement, OrderOut)
    items = rows[: wanted.limit]
    if len(rows) <= wanted.limit:
        return OrderPage(items=items, next_cursor=None)
    last = items[-1]
    return OrderPage(items=items, next_cursor=_next_cursor(filters, last.id, last.created_at))


def _next_cursor(filters: OrderFilters, last_id: int, last_created_at: datetime) -> str:
    """The cursor after a page's last order: its id, or with a created range (created_at, id)."""
    if filters.by_created:
        return encode_cursor(instant_key(last_created_at), last_id)
    return encode_cursor(last_id)


def list_after(wanted: OrderQuery) -> ListKey | None:
    """The key a page starts after (its cursor's); InvalidRequest for a cursor not of this
    list's kind."""
    if wanted.filters.by_created:
        return _created_cursor(wanted.after)
    return _id_cursor(wanted.after)


async def read_order_page(
    source: ConnectionSource,
    credential: Mapping[str, Any],
    wanted: OrderQuery,
    after: ListKey | None,
    key_usage: KeyUsage,
) -> tuple[Principal, repo.OrderPageRead]:
    """GET /orders in one round trip (repo.READ_ORDER_PAGE): the caller the credential names,
    401 if none, and the page they may see after the key `after` (list_after's, from the
    cursor), read as list_orders reads it. The caller decides with shown_page, once it has
    routed the request (as read_order)."""
    filters = wanted.filters
    after_created, after_id = _key_parts(after)
    params = {
        **credential,
        "status": filters.status,
        "risk_status": filters.risk_status,
        "client_id": filters.client_id,
        "symbol": filters.symbol and filters.symbol.upper(),
        "side": filters.side,
        "client_order_id": filters.client_order_id,
        "desk": filters.desk,
        "created_from": filters.created_from,
        "created_to": filters.created_to,
        "after_created": after_created,
        "after_id": after_id,
        "limit": wanted.limit,
    }
    read = await one_statement(source, repo.READ_ORDER_PAGE, params)
    principal = principal_found(None if read is None else read.caller, key_usage)
    assert read is not None  # a principal was found, in the statement's row
    return principal, read


def _key_parts(after: ListKey | None) -> tuple[datetime | None, int | None]:
    """A page's starting key as its creation time (a created range's) and its id."""
    match after:
        case (datetime() as created_at, int() as last_id):
            return created_at, last_id
        case (int() as last_id,):
            return None, last_id
    return None, None


def shown_page(principal: Principal, page: repo.OrderPageRead, wanted: OrderQuery) -> bytes:
    """The page read for `principal`, if they may read orders, as the list's OrderPage writes
    it: its items as PostgreSQL wrote them."""
    authorize(principal, Action.READ_ORDERS)
    cursor = None
    if page.more and page.last_id is not None and page.last_created_at is not None:
        cursor = _next_cursor(wanted.filters, page.last_id, page.last_created_at)
    return b"".join(
        (b'{"items":', page.items.encode(), b',"next_cursor":', orjson.dumps(cursor), b"}")
    )


def _id_cursor(cursor: str | None) -> ListKey | None:
    key = decode_id_cursor(cursor)
    return None if key is None else (key,)


def _created_cursor(cursor: str | None) -> ListKey | None:
    """With a created range the list is by (created_at, id), and so is its cursor."""
    key = decode_cursor(cursor, keys=2, signed_first=True)
    return None if key is None else (key_instant(key[0]), key[1])


async def list_filter_keys(
    uow: UnitOfWork, principal: Principal, wanted: OrderFilters
) -> ListFilterKeys | None:
    """The ids behind the client, symbol and desk filters, or None when one names nothing the
    principal may see: then no order matches, and none is read to find that out."""
    if wanted.client_id is None and wanted.symbol is None and wanted.desk is None:
        return ListFilterKeys()
    symbol = wanted.symbol and wanted.symbol.upper()
    found = await uow.row(
        repo.LIST_FILTER_KEYS,
        {"client_id": wanted.client_id, "symbol": symbol, "desk": wanted.desk},
    )
    keys = found or ListFilterKeys()
    unknown = (
        (wanted.client_id is not None and keys.client is None)
        or (wanted.symbol is not None and keys.instrument is None)
        or (wanted.desk is not None and keys.desk is None)
        or (keys.desk is not None and not principal.can_see_desk(keys.desk))
    )
    return None if unknown else keys
