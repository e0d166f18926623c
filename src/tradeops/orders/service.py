"""Order intake and reads. Every rule here is also a constraint or trigger in PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

import orjson

from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.db.uow import UnitOfWork
from tradeops.errors import Conflict, InvalidRequest, NotFound
from tradeops.jobs.defer import CHECK_ORDER_RISK, RISK_QUEUE, defer_job
from tradeops.orders import repository as repo
from tradeops.orders.schemas import OrderCreate, OrderOut, OrderPage
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


def _decimal_places(value: Decimal) -> int:
    exponent = value.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _is_multiple(value: Decimal, step: Decimal) -> bool:
    return value % step == 0


class OrderReferences(NamedTuple):
    """What intake needs to know of the order's client and instrument (None: not found)."""

    client_pk: int | None
    desk_id: int | None
    client_status: str | None
    desk: str | None
    instrument_pk: int | None
    currency: str | None
    lot_size: Decimal | None
    tick_size: Decimal | None
    instrument_active: bool | None


def check_order_rules(order: OrderCreate, refs: OrderReferences) -> None:
    """The rules that need the client and instrument rows; each failure names its field."""
    if refs.client_pk is None:
        raise InvalidRequest(f"Unknown client {order.client_id}.", field="body.client_id")
    if refs.client_status != "ACTIVE":
        raise InvalidRequest(f"Client {order.client_id} is not active.", field="body.client_id")
    if refs.instrument_pk is None:
        raise InvalidRequest(f"Unknown symbol {order.symbol}.", field="body.symbol")
    if not refs.instrument_active:
        raise InvalidRequest(f"Instrument {order.symbol} is not active.", field="body.symbol")
    assert refs.lot_size is not None and refs.tick_size is not None
    if not _is_multiple(order.quantity, refs.lot_size):
        raise InvalidRequest(
            f"Quantity must be a multiple of the lot size {refs.lot_size.normalize():f}.",
            field="body.quantity",
        )
    if order.price is not None and not _is_multiple(order.price, refs.tick_size):
        raise InvalidRequest(
            f"Price must be a multiple of the tick size {refs.tick_size.normalize():f}.",
            field="body.price",
        )


async def submit_order(
    uow: UnitOfWork, principal: Principal, order: OrderCreate, *, price_max_decimals: int = 6
) -> OrderOut:
    """Record a new order as PENDING; it then waits for review and a person's approval."""
    authorize(principal, Action.SUBMIT_ORDER)
    if order.price is not None and _decimal_places(order.price) > price_max_decimals:
        raise InvalidRequest(
            f"Price may have at most {price_max_decimals} decimal places.", field="body.price"
        )
    row = await uow.fetchrow(
        repo.SUBMIT_ORDER,
        {
            "client_id": order.client_id,
            "symbol": order.symbol,
            "all_desks": principal.all_desks,
            "desk_ids": list(principal.desk_ids),
            "side": order.side,
            "order_type": order.order_type,
            "time_in_force": order.time_in_force,
            "quantity": order.quantity,
            "price": order.price,
            "client_order_id": order.client_order_id,
            "created_by": principal.user_id,
            "created_by_key_id": principal.api_key_id,
            "actor": principal.actor,
            "event_payload": orjson.dumps({"request_id": uow.request_id}).decode(),
            "request_id": uow.request_id,
        },
    )
    assert row is not None  # the references row always comes back
    if row["id"] is None:
        await _explain_refusal(uow, principal, order, row)
    # The risk check is queued in the order's transaction: no order without it, nor vice versa.
    await defer_job(
        uow, CHECK_ORDER_RISK, RISK_QUEUE, {"order_id": row["id"]}, lock=f"order:{row['id']}"
    )
    refs = OrderReferences(**{field: row[field] for field in OrderReferences._fields})
    return OrderOut(
        **{k: row[k] for k in repo.CREATED_FIELDS},
        client_id=order.client_id,
        desk=refs.desk,
        symbol=order.symbol,
        side=order.side,
        order_type=order.order_type or "LIMIT",
        time_in_force=order.time_in_force,
        quantity=order.quantity,
        price=order.price,
        currency=refs.currency,
        avg_fill_price=None,
        client_order_id=order.client_order_id,
        created_by=principal.email,
        reviewed_by=None,
        approved_by=None,
    )


async def _explain_refusal(
    uow: UnitOfWork, principal: Principal, order: OrderCreate, row: Any
) -> None:
    """Nothing was inserted: name the rule that failed, or the order that has this id."""
    refs = OrderReferences(**{field: row[field] for field in OrderReferences._fields})
    # A client on another desk is unknown to this principal, never "forbidden": no existence leak.
    if refs.desk_id is not None and not principal.can_see_desk(refs.desk_id):
        refs = refs._replace(client_pk=None)
    check_order_rules(order, refs)
    existing = await uow.scalar(
        repo.EXISTING_CLIENT_ORDER,
        {"created_by": principal.user_id, "client_order_id": order.client_order_id},
    )
    raise DuplicateClientOrderId(
        f"client_order_id {order.client_order_id} was already used for order {existing}.",
        existing_order_id=existing,
    )


async def get_order(uow: UnitOfWork, principal: Principal, order_id: int) -> OrderOut:
    authorize(principal, Action.READ_ORDERS)
    row = await uow.fetchrow(
        repo.ORDER_BY_ID,
        {"id": order_id, "all_desks": principal.all_desks, "desk_ids": list(principal.desk_ids)},
    )
    if row is None:
        raise OrderNotFound(f"No order {order_id}.")
    return OrderOut.model_validate(dict(row))


async def list_orders(
    uow: UnitOfWork,
    principal: Principal,
    *,
    limit: int,
    after: str | None = None,
    client_id: str | None = None,
    symbol: str | None = None,
    desk: str | None = None,
    **filters: Any,
) -> OrderPage:
    """Newest first; keyset pagination, so pages stay stable while orders keep arriving.
    With a created range newest first is by (created_at, id), and so is the cursor
    (repository.filtered_orders says why)."""
    authorize(principal, Action.READ_ORDERS)
    by_created = filters.get("created_from") is not None or filters.get("created_to") is not None
    cursor = _created_cursor(after) if by_created else _id_cursor(after)
    keys = await list_filter_keys(uow, principal, client_id=client_id, symbol=symbol, desk=desk)
    if keys is None:
        return OrderPage(items=[], next_cursor=None)
    statement = repo.filtered_orders(principal, keys=keys, after=cursor, limit=limit + 1, **filters)
    rows = (await uow.execute(statement)).all()
    items = [OrderOut.model_validate(r._mapping) for r in rows[:limit]]
    if len(rows) <= limit:
        return OrderPage(items=items, next_cursor=None)
    last = items[-1]
    keys_of_last = (instant_key(last.created_at), last.id) if by_created else (last.id,)
    return OrderPage(items=items, next_cursor=encode_cursor(*keys_of_last))


def _id_cursor(cursor: str | None) -> tuple[int] | None:
    key = decode_id_cursor(cursor)
    return None if key is None else (key,)


def _created_cursor(cursor: str | None) -> tuple[datetime, int] | None:
    """With a created range the list is by (created_at, id), and so is its cursor."""
    key = decode_cursor(cursor, keys=2, signed_first=True)
    return None if key is None else (key_instant(key[0]), key[1])


async def list_filter_keys(
    uow: UnitOfWork,
    principal: Principal,
    *,
    client_id: str | None,
    symbol: str | None,
    desk: str | None,
) -> repo.ListFilterKeys | None:
    """The ids behind the client, symbol and desk filters, or None when one names nothing the
    principal may see: then no order matches, and none is read to find that out."""
    if client_id is None and symbol is None and desk is None:
        return repo.ListFilterKeys()
    row = await uow.fetchrow(
        repo.LIST_FILTER_KEYS,
        {"client_id": client_id, "symbol": symbol and symbol.upper(), "desk": desk},
    )
    keys = repo.ListFilterKeys(*row) if row is not None else repo.ListFilterKeys()
    unknown = (
        (client_id is not None and keys.client is None)
        or (symbol is not None and keys.instrument is None)
        or (desk is not None and keys.desk is None)
        or (keys.desk is not None and not principal.can_see_desk(keys.desk))
    )
    return None if unknown else keys
