"""The market_snapshots table's statements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import text

from tradeops.db.prepared import Id, query
from tradeops.marketdata.schemas import SnapshotOut


@dataclass(frozen=True, slots=True)
class Published:
    stored: int
    unknown: list[int] | None  # 1-based positions of unknown symbols


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot with its id, for the next page's cursor."""

    symbol: str
    price: Decimal
    bid: Decimal | None
    ask: Decimal | None
    as_of: datetime
    source: str
    id: int


# The whole batch in one statement: the arrays are unnested in request order, symbols
# resolved to instruments, and the rows inserted only when every symbol is known. A snapshot
# already stored (same instrument, as_of and source) is skipped. Rows go in in key order, so
# concurrent batches that overlap wait for each other instead of deadlocking. Returns how
# many rows were inserted and the positions (1-based) of unknown symbols.
PUBLISH = query(
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
    ),
    Published,
)

_SNAPSHOT = (
    "SELECT i.symbol, s.price, s.bid, s.ask, s.as_of, s.source, s.id FROM market_snapshots s"
    " JOIN instruments i ON i.id = s.instrument_id"
)

# The first entry of the (instrument_id, as_of DESC, id DESC) index, read through a lateral join so
# the planner stops there; of two prices quoted at the same moment (by different sources),
# the one received last.
LATEST = query(
    text(
        "SELECT i.symbol, s.price, s.bid, s.ask, s.as_of, s.source FROM instruments i"
        " CROSS JOIN LATERAL (SELECT * FROM market_snapshots m WHERE m.instrument_id = i.id"
        "  ORDER BY m.as_of DESC, m.id DESC LIMIT 1) s"
        " WHERE i.symbol = :symbol"
    ),
    SnapshotOut,
)

INSTRUMENT_ID = query("SELECT id FROM instruments WHERE symbol = :symbol", Id)

HISTORY = query(
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
    ),
    Snapshot,
)
