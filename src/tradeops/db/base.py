"""Declarative base with one naming convention, so migrations name constraints predictably."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, cast

from sqlalchemy import BigInteger, DateTime, MetaData, Numeric, Table, func
from sqlalchemy.orm import DeclarativeBase, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Quantities and money: numeric(20,6) in PostgreSQL, Decimal in Python, strings in JSON.
Amount = Annotated[Decimal, mapped_column(Numeric(20, 6))]
BigId = Annotated[int, mapped_column(BigInteger, primary_key=True, autoincrement=True)]
CreatedAt = Annotated[
    datetime, mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)
]


def table_of(model: type[Base]) -> Table:
    """The Core table of a model, for statements that skip the ORM on hot paths."""
    return cast(Table, model.__table__)
