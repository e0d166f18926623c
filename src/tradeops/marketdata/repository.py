"""The market_snapshots table's statements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import text

from tradeops.audit.repository import append_audit
from tradeops.auth.repository import CallerRow
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


@dataclass(frozen=True, slots=True)
class PublishedBy(CallerRow):
    """A batch published in one statement: who asked (the authenticating statement's row) and
    PUBLISH's row, `stored` None when the caller may not publish (nothing was written). No
    row at all when the credentials name nobody."""

    stored: int | None
    unknown: list[int] | None

    @property
    def published(self) -> Published | None:
        return None if self.stored is None else Published(self.stored, self.unknown)


# The batch in one round trip (issue 15: "a write needs at most two"): the function
# authenticates (as tradeops_read_order), and for a caller of a role in :roles whose key, if
# any, has every scope in :scopes (auth.permissions), runs PUBLISH after the switch, its lock
# waits bounded by :lock_timeout_ms; when it stored anything, it appends the batch's audit
# event (PUBLISHED_AUDIT).
PUBLISH_IN_ONE_STATEMENT = query(
    "SELECT caller, snapshots_stored AS stored, unknown_positions AS unknown"
    " FROM tradeops_publish_snapshots("
    ":prefix, :hash, :user_id, :email, :app_role, :request_id, :roles, :scopes,"
    " :lock_timeout_ms, :symbols, :prices, :bids, :asks, :as_ofs, :sources, :entity_id,"
    " :after)",
    PublishedBy,
    alone=True,
)
# The audit event service.publish records for a batch, as the function appends it: what the
# application says of the batch (:after, JSON) with the counts only PUBLISH knows.
PUBLISHED = "market_data.published"
PUBLISHED_AUDIT = append_audit(
    entity="'market_data'",
    entity_id="in_entity_id",
    action=f"'{PUBLISHED}'",
    after="CAST(in_after AS jsonb) || jsonb_build_object("
    "'stored', n_stored, 'duplicates', cardinality(in_symbols) - n_stored)",
)


def publish_function() -> tuple[str, str]:
    """PUBLISH and PUBLISHED_AUDIT as tradeops_publish_snapshots runs them (migration 0036),
    PUBLISH's row read into `n_stored` and `at_unknown`. The installed function holds exactly
    these (tests/integration/test_one_statement_publish.py): a change to PUBLISH comes with a
    migration."""
    publish = PUBLISH.prepared.written_with(lambda name: f"in_{name}")
    return publish + " INTO n_stored, at_unknown", PUBLISHED_AUDIT


_SNAPSHOT = (
    "SELECT i.symbol, s.price, s.bid, s.ask, s.as_of, s.source, s.id FROM market_snapshots s"
    " JOIN instruments i ON i.id = s.instrument_id"
)

# The instrument's latest snapshot, as latest_prices holds it (migration 0042): the first
# entry of the (instrument_id, as_of DESC, id DESC) index, so of two prices quoted at the
# same moment (by different sources), the one received last.
LATEST = query(
    text(
        "SELECT i.symbol, s.price, s.bid, s.ask, s.as_of, s.source FROM instruments i"
        " JOIN latest_prices l ON l.instrument_id = i.id"
        " JOIN market_snapshots s ON s.id = l.snapshot_id"
        " WHERE i.symbol = :symbol"
    ),
    SnapshotOut,
)


@dataclass(frozen=True, slots=True)
class LatestRead(CallerRow):
    """GET /market-data/{symbol} in one statement: who asked, and the latest snapshot
    (its columns None when the symbol is unknown or has no price). No row at all when the
    credentials name nobody."""

    symbol: str | None
    price: Decimal | None
    bid: Decimal | None
    ask: Decimal | None
    as_of: datetime | None
    source: str | None

    @property
    def found(self) -> SnapshotOut | None:
        if self.symbol is None:
            return None
        return SnapshotOut(
            symbol=self.symbol,
            price=self.price,
            bid=self.bid,
            ask=self.ask,
            as_of=self.as_of,
            source=self.source,
        )


# LATEST in one round trip (migration 0045): the function authenticates, then reads it.
READ_LATEST = query(
    "SELECT caller, symbol, price, bid, ask, as_of, source FROM tradeops_read_latest_price("
    ":prefix, :hash, :user_id, :email, :app_role, :request_id, :symbol)",
    LatestRead,
    alone=True,
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
