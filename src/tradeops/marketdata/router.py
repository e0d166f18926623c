from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import AwareDatetime

from tradeops.db.http import TransactionalRoute, answered_in_one_statement
from tradeops.db.uow import ConnectionSource
from tradeops.deps import (
    API_PREFIX,
    CurrentPrincipal,
    DeclaredQueryOnly,
    UoW,
    answered_in_one_round_trip,
    body_as,
)
from tradeops.errors import Forbidden, InvalidRequest
from tradeops.marketdata import service
from tradeops.marketdata.schemas import PublishResult, SnapshotBatch, SnapshotOut, SnapshotPage
from tradeops.problems import problem_responses

PREFIX = f"{API_PREFIX}/market-data"
# Bulk uploads may be larger than other request bodies (TRADEOPS_MAX_BULK_BODY_BYTES).
SNAPSHOTS_PATH = f"{PREFIX}/snapshots"

router = APIRouter(prefix=PREFIX, tags=["market data"], route_class=TransactionalRoute)


async def _publish_in_one_statement(db: ConnectionSource, request: Request) -> Response | None:
    """POST /snapshots in one round trip (issue 15): authentication, the context, the batch
    and its audit event in one statement. None (the endpoint below answers, in a transaction,
    as documented) for a body that does not validate, no credentials, or a caller who may not
    publish: nothing was written then."""
    batch = await body_as(request, SnapshotBatch)
    if batch is None:
        return None
    return await answered_in_one_round_trip(
        request,
        lambda credential, key_usage: service.publish_in_one_statement(
            db, credential, batch, key_usage
        ),
        lambda _, result: (
            None
            if result is None
            else Response(
                result.model_dump_json(), status.HTTP_201_CREATED, media_type="application/json"
            )
        ),
    )


@router.post(
    "/snapshots",
    status_code=status.HTTP_201_CREATED,
    response_model=PublishResult,
    responses=problem_responses(InvalidRequest, Forbidden),
)
@answered_in_one_statement(_publish_in_one_statement)
async def publish_snapshots(
    batch: SnapshotBatch, principal: CurrentPrincipal, uow: UoW
) -> PublishResult:
    """Publish prices: 1 to 5000 snapshots in one request, stored together in one statement.

    Each snapshot is a `symbol` (a known instrument), a `price` and optionally `bid` and `ask`
    (decimals in the instrument's currency, sent as strings such as `"192.55"` or JSON numbers;
    > 0, at most 6 decimals, `bid` ≤ `ask`), `as_of` (ISO 8601 with a time zone) and `source`
    (1 to 64 characters, e.g. `bloomberg`). A snapshot we already have — same symbol, `as_of`
    and `source` — is skipped, so resending a batch is safe: the answer counts `received`,
    `stored` and `duplicates`. An unknown symbol fails the whole batch with 422, naming each
    offending `body.snapshots.<index>.symbol`. For admins, or an admin's key with the scope
    `marketdata:write`.
    """
    return await service.publish(uow, principal, batch)


async def _latest_in_one_statement(db: ConnectionSource, request: Request) -> Response | None:
    """GET /{symbol} (its latest price) in one round trip (issue 15): authentication, the
    context and the read in one statement; None without credentials, for the endpoint below
    to answer its documented 401."""
    symbol = request.path_params["symbol"]
    return await answered_in_one_round_trip(
        request,
        lambda credential, key_usage: service.read_latest(db, credential, symbol, key_usage),
        lambda principal, snapshot: Response(
            service.shown_latest(principal, snapshot, symbol).model_dump_json(),
            media_type="application/json",
        ),
    )


@router.get(
    "/{symbol}",
    response_model=SnapshotOut,
    responses=problem_responses(service.MarketDataNotFound),
)
@answered_in_one_statement(_latest_in_one_statement)
async def latest_snapshot(symbol: str, principal: CurrentPrincipal, uow: UoW) -> SnapshotOut:
    """The latest price of an instrument (any case): the snapshot with the newest `as_of`.

    Prices, bids and asks are decimal strings in the instrument's currency; `bid` and `ask` are
    null when the source did not quote them. 404 when the symbol is unknown or has no price
    yet. Anyone signed in, and any API key.
    """
    return await service.latest(uow, principal, symbol)


@router.get(
    "/{symbol}/history",
    response_model=SnapshotPage,
    responses=problem_responses(InvalidRequest, service.MarketDataNotFound),
    dependencies=[DeclaredQueryOnly],
)
async def snapshot_history(
    symbol: str,
    request: Request,
    principal: CurrentPrincipal,
    uow: UoW,
    as_of_from: Annotated[
        AwareDatetime | None,
        Query(alias="from", description="Inclusive, ISO 8601 with a time zone"),
    ] = None,
    as_of_to: Annotated[
        AwareDatetime | None,
        Query(alias="to", description="Exclusive, ISO 8601 with a time zone"),
    ] = None,
    after: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int | None, Query(ge=1, le=500)] = None,
) -> SnapshotPage:
    """An instrument's prices with `as_of` in [`from`, `to`), newest first, one page at a
    time (follow `next_cursor`). Same shape as the latest price: decimal strings in the
    instrument's currency. 404 when the symbol is unknown; an empty page when it has no price
    in the range."""
    settings = request.app.state.settings
    return await service.history(
        uow,
        principal,
        symbol,
        limit=limit or settings.page_size_default,
        after=after,
        as_of_from=as_of_from,
        as_of_to=as_of_to,
    )
