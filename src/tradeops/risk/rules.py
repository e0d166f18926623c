"""The pre-trade rules, as pure functions of what the check read: easy to test, easy to read.

Each broken rule gives one reason with a machine-readable code; no reasons means PASSED.
The check fails closed: what it cannot verify (no market price to value a market order or
to test a limit price against) is a reason too.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tradeops.decimals import plain
from tradeops.positions.accounting import signed_quantity

HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit and whose it is ("desk" or "client"); the stricter of the two applies."""

    value: Decimal
    scope: str


@dataclass(frozen=True, slots=True)
class RiskFacts:
    symbol: str
    side: str
    quantity: Decimal
    price: Decimal | None  # the limit price; None for a market order
    currency: str
    restricted: bool
    last_price: Decimal | None  # the instrument's latest market snapshot
    position: Decimal  # the client's current signed position in the instrument
    working: Decimal  # signed open quantity of the client's approved, unfilled orders
    max_order_notional: Limit | None
    max_position: Limit | None
    fat_finger_pct: Decimal


def stricter(desk: Decimal | None, client: Decimal | None) -> Limit | None:
    candidates = [Limit(v, s) for v, s in ((desk, "desk"), (client, "client")) if v is not None]
    return min(candidates, key=lambda limit: limit.value, default=None)


def _reason(code: str, message: str, **facts: Any) -> dict[str, Any]:
    shown = {k: plain(v) if isinstance(v, Decimal) else v for k, v in facts.items()}
    return {"code": code, "message": message, **shown}


def _restricted(f: RiskFacts) -> list[dict[str, Any]]:
    if not f.restricted:
        return []
    return [_reason("RESTRICTED_INSTRUMENT", f"{f.symbol} is on the restricted list.")]


def _notional(f: RiskFacts) -> list[dict[str, Any]]:
    valuation = f.price if f.price is not None else f.last_price
    if valuation is None:
        return [
            _reason(
                "NO_MARKET_PRICE",
                f"No market price for {f.symbol}: the market order's notional is unknown.",
            )
        ]
    notional = f.quantity * valuation
    limit = f.max_order_notional
    if limit is None or notional <= limit.value:
        return []
    return [
        _reason(
            "NOTIONAL_ABOVE_LIMIT",
            f"Notional {plain(notional)} {f.currency} is above the {limit.scope}'s limit of "
            f"{plain(limit.value)} {f.currency}.",
            scope=limit.scope,
            limit=limit.value,
            value=notional,
        )
    ]


def _fat_finger(f: RiskFacts) -> list[dict[str, Any]]:
    if f.price is None:
        return []  # a market order takes the market's price
    if f.last_price is None:
        return [
            _reason(
                "NO_MARKET_PRICE",
                f"No market price for {f.symbol}: the limit price cannot be checked.",
            )
        ]
    deviation = abs(f.price - f.last_price) / f.last_price * HUNDRED
    if deviation <= f.fat_finger_pct:
        return []
    return [
        _reason(
            "PRICE_AWAY_FROM_MARKET",
            f"Limit price {plain(f.price)} is {plain(round(deviation, 2))}% away from the last "
            f"price {plain(f.last_price)}; the band is {plain(f.fat_finger_pct)}%.",
            limit=f.fat_finger_pct,
            value=round(deviation, 4),
            last_price=f.last_price,
        )
    ]


def _position(f: RiskFacts) -> list[dict[str, Any]]:
    limit = f.max_position
    expected = f.position + f.working  # once the approved orders fill
    resulting = expected + signed_quantity(f.side, f.quantity)
    # An order that brings the position closer to flat only lowers the risk: never refused.
    if limit is None or abs(resulting) <= limit.value or abs(resulting) < abs(expected):
        return []
    return [
        _reason(
            "POSITION_ABOVE_LIMIT",
            f"The resulting position in {f.symbol} would be {plain(resulting)} (with the "
            f"approved orders not yet filled), beyond the {limit.scope}'s limit of "
            f"{plain(limit.value)}.",
            scope=limit.scope,
            limit=limit.value,
            value=resulting,
        )
    ]


RULES = (_restricted, _notional, _fat_finger, _position)


def evaluate(facts: RiskFacts) -> list[dict[str, Any]]:
    """Every broken rule's reason, in a fixed order."""
    return [reason for rule in RULES for reason in rule(facts)]
