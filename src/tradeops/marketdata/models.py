"""Market data: the bank's prices per instrument, as published by its feeds."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Numeric,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from tradeops.db.base import Amount, Base


class MarketSnapshot(Base):
    """One price of one instrument at one moment from one source; resending it changes nothing."""

    __tablename__ = "market_snapshots"
    __table_args__ = (
        CheckConstraint("price > 0", name="price_positive"),
        CheckConstraint("bid IS NULL OR bid > 0", name="bid_positive"),
        CheckConstraint("ask IS NULL OR ask > 0", name="ask_positive"),
        CheckConstraint("bid IS NULL OR ask IS NULL OR bid <= ask", name="bid_not_above_ask"),
        CheckConstraint("length(source) BETWEEN 1 AND 64", name="source"),
        # A resent snapshot is the same row: publishing is idempotent.
        UniqueConstraint("instrument_id", "as_of", "source"),
        # The latest price of an instrument is the first entry of this index, ties (two
        # sources at the same time) broken by the later row; latest_prices holds it for its
        # readers (LatestPrice). The index serves an instrument's history, newest first.
        Index("ix_market_snapshots_latest", "instrument_id", text("as_of DESC"), text("id DESC")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    instrument_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("instruments.id"))
    price: Mapped[Amount]
    bid: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    ask: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class LatestPrice(Base):
    """An instrument's latest price: the first entry of ix_market_snapshots_latest, kept in
    the publishing statement by a trigger on market_snapshots (migration 0042). Every reader
    of the latest price reads it here (the portfolio, the risk check, the fill simulator,
    GET /market-data/{symbol}, a MARKET order's approvals: 0044), each position of a
    portfolio with a key lookup. Written by that trigger alone."""

    __tablename__ = "latest_prices"
    __table_args__ = (CheckConstraint("price > 0", name="price_positive"),)

    instrument_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("instruments.id"), primary_key=True
    )
    snapshot_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("market_snapshots.id"), unique=True
    )
    price: Mapped[Amount]
    as_of: Mapped[datetime] = mapped_column(DateTime(timezone=True))
