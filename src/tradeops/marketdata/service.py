"""Market data: publish prices in bulk, read an instrument's latest price and its history."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text

from tradeops.audit import service as audit
from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.db.prepared import prepare
from tradeops.db.uow import UnitOfWork
from tradeops.errors import DomainError, InvalidRequest, NotFound
from tradeops.marketdata.schemas import (
    PublishResult,
    SnapshotBatch,
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


# The whole batch in one statement: the arrays are unnested in request order, symbols
# resolved to instruments, and the rows inserted only when every symbol is known. A snapshot
# already stored (same instrument, as_of and source) is skipped. Rows go in in key order, so
# concurrent batches that overlap wait for each other instead of deadlocking. Returns how
# many rows were inserted and the positions (1-based) of unknown symbols.
PUBLISH = prepare(
    text(
        "WITH input AS ("
        " SELECT * FROM unnest(CAST(:symbols AS text[]), CAST(:prices AS numeric[]),"
        "  CAST(:bids AS numeric[]), CAST(:asks AS numeric[]), CAST(:as_ofs AS timestamptz[]),"
        "  CAST(:sources AS text[]))"
        "  WITH ORDINALITY AS t(symbol, price, bid, ask, as_of, source, n)),"
        " resolved AS ("
        " SELECT input.*, i.id AS instrument_id FROM input"
        " LEFT JOIN instruments i ON i.symbol = input.symbol),"
        " unknown AS (SELECT n FROM resolved WHERE instrument_id IS NULL),"
        " stored AS ("
        " INSERT INTO market_snapshots (instrument_id, price, bid, ask, as_of, source)"
        " SELECT instrument_id, price, bid, ask, as_of, source FROM resolved"
        " WHERE NOT EXISTS (SELECT FROM unknown) ORDER BY instrument_id, as_of, source"
        " ON CONFLICT (instrument_id, as_of, source) DO NOTHING RETURNING 1)"
        " SELECT (SELECT count(*) FROM stored) AS stored,"
        "  (SELECT array_agg(n ORDER BY n) FROM unknown) AS unknown"
    )
)

_SNAPSHOT = (
    "SELECT i.symbol, s.price, s.bid, s.ask, s.as_of, s.source, s.id FROM market_snapshots s"
    " JOIN instruments i ON i.id = s.instrument_id"
)

# The first entry of the (instrument_id, as_of DESC) index, read through a lateral join so
# the planner stops there; of two prices quoted at the same moment (by different sources),
# the one received last.
LATEST = prepare(
    text(
        "SELECT i.symbol, s.price, s.bid, s.ask, s.as_of, s.source FROM instruments i"
        " CROSS JOIN LATERAL (SELECT * FROM market_snapshots m WHERE m.instrument_id = i.id"
        "  ORDER BY m.as_of DESC, m.id DESC LIMIT 1) s"
        " WHERE i.symbol = :symbol"
    )
)

INSTRUMENT_ID = prepare(text("SELECT id FROM instruments WHERE symbol = :symbol"))

HISTORY = prepare(
    text(
        _SNAPSHOT + " WHERE s.instrument_id = :instrument_id"
        " AND s.as_of >= COALESCE(CAST(:as_of_from AS timestamptz), '-infinity')"
        " AND s.as_of < COALESCE(CAST(:as_of_to AS timestamptz), 'infinity')"
        # The bound on as_of alone is an index condition; the row comparison then skips
        # the snapshots of the cursor's own moment already shown.
        " AND s.as_of <= COALESCE(CAST(:after_as_of AS timestamptz), 'infinity')"
        " AND (CAST(:after_as_of AS timestamptz) IS NULL"
        "  OR (s.as_of, s.id) < (CAST(:after_as_of AS timestamptz), CAST(:after_id AS bigint)))"
        " ORDER BY s.as_of DESC, s.id DESC LIMIT :limit"
    )
)

_SHOWN_UNKNOWN = 20  # field errors listed for unknown symbols; the detail counts them all


async def publish(uow: UnitOfWork, principal: Principal, batch: SnapshotBatch) -> PublishResult:
    """Store every new snapshot of the batch in one statement, or none if a symbol is unknown.

    One audit event records the batch (counts, sources, as_of range) when it stored anything.
    """
    authorize(principal, Action.PUBLISH_MARKET_DATA)
    items = batch.snapshots
    row = await uow.fetchrow(
        PUBLISH,
        {
            "symbols": [s.symbol for s in items],
            "prices": [s.price for s in items],
            "bids": [s.bid for s in items],
            "asks": [s.ask for s in items],
            "as_ofs": [s.as_of for s in items],
            "sources": [s.source for s in items],
        },
    )
    assert row is not None  # an aggregate always answers one row
    if row["unknown"]:
        positions = [n - 1 for n in row["unknown"]]
        names = sorted({items[p].symbol for p in positions})
        raise UnknownSymbols(
            f"Unknown symbol{'s' if len(names) > 1 else ''} {', '.join(names[:_SHOWN_UNKNOWN])}"
            f" in {len(positions)} snapshot{'s' if len(positions) > 1 else ''}; nothing was"
            " stored.",
            [f"body.snapshots.{p}.symbol" for p in positions[:_SHOWN_UNKNOWN]],
        )
    result = PublishResult(
        received=len(items), stored=row["stored"], duplicates=len(items) - row["stored"]
    )
    if not result.stored:  # a resent batch changed nothing: nothing to audit
        return result
    sources = sorted({s.source for s in items})
    await audit.record(
        uow,
        principal,
        "market_data.published",
        "market_data",
        ",".join(sources),
        after={
            **result.model_dump(),
            "sources": sources,
            "as_of_from": min(s.as_of for s in items),
            "as_of_to": max(s.as_of for s in items),
        },
    )
    return result


async def latest(uow: UnitOfWork, principal: Principal, symbol: str) -> SnapshotOut:
    authorize(principal, Action.READ_MARKET_DATA)
    row = await uow.fetchrow(LATEST, {"symbol": symbol.upper()})
    if row is None:
        raise MarketDataNotFound(f"No market data for symbol {symbol}.")
    return SnapshotOut.model_validate(dict(row))


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
    instrument_id = await uow.scalar(INSTRUMENT_ID, {"symbol": symbol.upper()})
    if instrument_id is None:
        raise MarketDataNotFound(f"No market data for symbol {symbol}.")
    rows = (
        await uow.execute(
            HISTORY,
            {
                "instrument_id": instrument_id,
                "as_of_from": as_of_from,
                "as_of_to": as_of_to,
                "after_as_of": after_as_of,
                "after_id": after_id,
                "limit": limit + 1,
            },
        )
    ).all()
    items = [SnapshotOut.model_validate(r._mapping) for r in rows[:limit]]
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
