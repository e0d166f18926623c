from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Identity, Text
from sqlalchemy.orm import Mapped, mapped_column

from tradeops.db.base import Base


class Desk(Base):
    __tablename__ = "desks"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    code: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str] = mapped_column(Text)


class DeskMember(Base):
    __tablename__ = "desk_members"

    user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    desk_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("desks.id", ondelete="CASCADE"), primary_key=True, index=True
    )
