"""Market data: publish prices in bulk, read an instrument's latest price and its history."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tradeops.audit import recording as audit
from tradeops.auth.authentication import principal_found
from tradeops.auth.key_usage import KeyUsage
from tradeops.auth.permissions import Action, authorize, who_may_all
from tradeops.auth.principal import Principal
from tradeops.db.uow import ConnectionSource, UnitOfWork, one_statement, one_write
from tradeops.errors import DomainError, InvalidRequest, NotFound
from tradeops.marketdata import repository as repo
from tradeops.marketdata.schemas import (
    PublishResult,
    SnapshotBatch,
    SnapshotIn,
    SnapshotOut,
    SnapshotPage,
)
from tradeops.pagination import decode_cursor, encode_cursor, instant_key, key_instant


class MarketDataNotFound(NotFound):
    slug = "market-data-not-found"
    title = "No market data"


class UnknownSymbols(InvalidRequest):
    """Some snapshots name no known instrument: nothing of the batch is stored."""

    def __init__(self, detail: str, fields: list[str]) -> None:
        DomainError.__init__(self, detail, errors=[{"field": f, "message": detail} for f in fields])


_SHOWN_UNKNOWN = 20  # field errors listed for unknown symbols; the detail counts them all


async def publish(uow: UnitOfWork, principal: Principal, batch: SnapshotBatch) -> PublishResult:
    """Store every new snapshot of the batch in one statement, or none if a symbol is unknown.

    One audit event records the batch (counts, sources, as_of range) when it stored anything.
    """
    authorize(principal, Action.PUBLISH_MARKET_DATA)
    items = batch.snapshots
    row = await uow.row(repo.PUBLISH, _columns(items))
    assert row is not None  # an aggregate always answers one row
    result = _published(items, row)
    if not result.stored:  # a resent batch changed nothing: nothing to audit
        return result
    said = _said_of(items)
    after = {**result.model_dump(), **said}
    await audit.record(
        uow, principal, repo.PUBLISHED, "market_data", ",".join(said["sources"]), after=after
    )
    return result


async def publish_in_one_statement(
    source: ConnectionSource,
    credential: Mapping[str, Any],
    batch: SnapshotBatch,
    key_usage: KeyUsage,
) -> tuple[Principal, PublishResult | None]:
    """The batch in one round trip (repo.PUBLISH_IN_ONE_STATEMENT), with its audit event as
    `publish` records it: the caller the credential (auth.authentication.
    credential_parameters) names, 401 if none, and the result; None when the caller may not
    publish (nothing written), which `publish`, in a transaction, refuses as documented."""
    items = batch.snapshots
    said = _said_of(items)
    params = {
        **credential,
        **who_may_all(Action.PUBLISH_MARKET_DATA),
        **_columns(items),
        "entity_id": ",".join(said["sources"]),
        "after": audit.as_payload({"received": len(items), **said}),
    }
    row = await one_write(source, repo.PUBLISH_IN_ONE_STATEMENT, params)
    principal = principal_found(None if row is None else row.caller, key_usage)
    published = None if row is None else row.published
    return principal, None if published is None else _published(items, published)


def _columns(items: list[SnapshotIn]) -> dict[str, list[Any]]:
    """The batch as PUBLISH takes it: one array per column, in request order."""
    return {
        "symbols": [s.symbol for s in items],
        "prices": [s.price for s in items],
        "bids": [s.bid for s in items],
        "asks": [s.ask for s in items],
        "as_ofs": [s.as_of for s in items],
        "sources": [s.source for s in items],
    }


def _said_of(items: list[SnapshotIn]) -> dict[str, Any]:
    """What the batch's audit event says of it besides the counts."""
    return {
        "sources": sorted({s.source for s in items}),
        "as_of_from": min(s.as_of for s in items),
        "as_of_to": max(s.as_of for s in items),
    }


def _published(items: list[SnapshotIn], row: repo.Published) -> PublishResult:
    """PUBLISH's answer: the counts, or 422 naming each snapshot of an unknown symbol (then
    nothing was stored)."""
    if row.unknown:
        positions = [n - 1 for n in row.unknown]
        names = sorted({items[p].symbol for p in positions})
        raise UnknownSymbols(
            f"Unknown symbol{'s' if len(names) > 1 else ''} {', '.join(names[:_SHOWN_UNKNOWN])}"
            f" in {len(positions)} snapshot{'s' if len(positions) > 1 else ''}; nothing was"
            " stored.",
            [f"snapshots.{p}.symbol" for p in positions[:_SHOWN_UNKNOWN]],
        )
    return PublishResult(received=len(items), stored=row.stored, duplicates=len(items) - row.stored)


async def latest(uow: UnitOfWork, principal: Principal, symbol: str) -> SnapshotOut:
    authorize(principal, Action.READ_MARKET_DATA)
    snapshot = await uow.row(repo.LATEST, {"symbol": symbol.upper()})
    return shown_latest(principal, snapshot, symbol)


async def read_latest(
    source: ConnectionSource, credential: Mapping[str, Any], symbol: str, key_usage: KeyUsage
) -> tuple[Principal, SnapshotOut | None]:
    """GET /market-data/{symbol} in one round trip (repo.READ_LATEST): the caller
    the credential names, 401 if none, and the latest snapshot, if any. The caller decides
    with shown_latest, once it has routed the request (as orders.service.read_order)."""
    params = {**credential, "symbol": symbol.upper()}
    read = await one_statement(source, repo.READ_LATEST, params)
    principal = principal_found(None if read is None else read.caller, key_usage)
    return principal, None if read is None else read.found


def shown_latest(principal: Principal, snapshot: SnapshotOut | None, symbol: str) -> SnapshotOut:
    """The latest snapshot read for `principal`, if they may read market data and it exists."""
    authorize(principal, Action.READ_MARKET_DATA)
    if snapshot is None:
        raise MarketDataNotFound(f"No market data for symbol {symbol}.")
    return snapshot


async def history(
    uow: UnitOfWork,
    principal: Principal,
    symbol: str,
    *,
    limit: int,
    after: str | None = None,
    as_of_from: datetime | None = None,
    as_of_to: datetime | None = None,
) -> SnapshotPage:
    """Newest first; keyset pagination on (as_of, id), so pages hold while prices arrive."""
    authorize(principal, Action.READ_MARKET_DATA)
    after_as_of, after_id = _snapshot_after(after)
    instrument = await uow.row(repo.INSTRUMENT_ID, {"symbol": symbol.upper()})
    if instrument is None:
        raise MarketDataNotFound(f"No market data for symbol {symbol}.")
    rows = await uow.rows(
        repo.HISTORY,
        {
            "instrument_id": instrument.id,
            "as_of_from": as_of_from,
            "as_of_to": as_of_to,
            "after_as_of": after_as_of,
            "after_id": after_id,
            "limit": limit + 1,
        },
    )
    items = [SnapshotOut.model_validate(r, from_attributes=True) for r in rows[:limit]]
    next_cursor = (
        encode_cursor(instant_key(rows[limit - 1].as_of), rows[limit - 1].id)
        if len(rows) > limit
        else None
    )
    return SnapshotPage(items=items, next_cursor=next_cursor)


def _snapshot_after(cursor: str | None) -> tuple[datetime, int] | tuple[None, None]:
    """A history cursor: the (as_of, id) key of the last snapshot shown."""
    key = decode_cursor(cursor, keys=2, signed_first=True)
    return (None, None) if key is None else (key_instant(key[0]), key[1])
