"""The words of an order's life, as the database's CHECK constraints spell them."""

from __future__ import annotations

from enum import StrEnum


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    REVIEWED = "REVIEWED"
    APPROVED = "APPROVED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"
    REPLACED = "REPLACED"  # amended: its replacement (replaced_by) carries on
    EXPIRED = "EXPIRED"  # its time passed before it was filled (the expiry job)


# What may still change: cancelled, replaced or filled further. Replacing is allowed from all
# of them (a PARTIALLY_FILLED order keeps its fills); cancelling from all but PARTIALLY_FILLED.
OPEN_STATUSES = frozenset(
    {OrderStatus.PENDING, OrderStatus.REVIEWED, OrderStatus.APPROVED, OrderStatus.PARTIALLY_FILLED}
)


class RiskStatus(StrEnum):
    PENDING = "PENDING"
    PASSED = "PASSED"
    FAILED = "FAILED"
