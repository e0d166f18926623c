from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, DateTime, Identity, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from tradeops.db.base import Amount, Base, CreatedAt

ASSET_CLASSES = ("EQUITY", "ETF", "BOND", "FX", "FUTURE", "OPTION")


class Instrument(Base):
    __tablename__ = "instruments"
    __table_args__ = (
        CheckConstraint("symbol ~ '^[A-Z0-9][A-Z0-9.\\-/]{0,31}$'", name="symbol"),
        CheckConstraint(f"asset_class IN {ASSET_CLASSES}", name="asset_class"),
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency"),
        CheckConstraint("lot_size > 0", name="lot_size_positive"),
        CheckConstraint("tick_size > 0", name="tick_size_positive"),
        CheckConstraint("length(name) BETWEEN 1 AND 200", name="name"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    symbol: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str] = mapped_column(Text)
    asset_class: Mapped[str] = mapped_column(Text, server_default="EQUITY")
    currency: Mapped[str] = mapped_column(Text)
    lot_size: Mapped[Amount]
    tick_size: Mapped[Amount]
    restricted: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
