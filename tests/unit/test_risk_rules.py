"""The pre-trade rules on hand-made facts: each rule's edge, scopes, and failing closed."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D

import pytest

from tradeops.risk.rules import Limit, RiskFacts, evaluate, stricter

FACTS = RiskFacts(
    symbol="AAPL",
    side="BUY",
    quantity=D(100),
    price=D("200.00"),
    currency="USD",
    restricted=False,
    last_price=D("200.00"),
    position=D(0),
    working=D(0),
    max_order_notional=None,
    max_position=None,
    fat_finger_pct=D(10),
)


def codes(facts: RiskFacts) -> list[str]:
    return [reason["code"] for reason in evaluate(facts)]


def test_a_plain_order_passes() -> None:
    assert evaluate(FACTS) == []


def test_restricted_instrument_fails() -> None:
    [reason] = evaluate(replace(FACTS, restricted=True))
    assert reason["code"] == "RESTRICTED_INSTRUMENT"
    assert "AAPL" in reason["message"]


def test_notional_at_the_limit_passes_and_above_fails() -> None:
    at_limit = replace(FACTS, max_order_notional=Limit(D(20000), "desk"))
    assert evaluate(at_limit) == []
    [reason] = evaluate(replace(FACTS, max_order_notional=Limit(D("19999.99"), "client")))
    assert reason == {
        "code": "NOTIONAL_ABOVE_LIMIT",
        "message": "Notional 20000 USD is above the client's limit of 19999.99 USD.",
        "scope": "client",
        "limit": "19999.99",
        "value": "20000",
    }


def test_market_order_is_valued_at_the_last_price() -> None:
    limit = Limit(D(25000), "desk")
    market = replace(FACTS, price=None, last_price=D(300), max_order_notional=limit)
    [reason] = evaluate(market)
    assert (reason["code"], reason["value"]) == ("NOTIONAL_ABOVE_LIMIT", "30000")


def test_without_a_market_price_the_check_fails_closed() -> None:
    assert codes(replace(FACTS, price=None, last_price=None)) == ["NO_MARKET_PRICE"]
    assert codes(replace(FACTS, last_price=None)) == ["NO_MARKET_PRICE"]


@pytest.mark.parametrize(
    ("price", "broken"),
    [("220.00", False), ("180.00", False), ("220.01", True), ("179.99", True)],
)
def test_fat_finger_band_is_inclusive(price: str, broken: bool) -> None:
    assert codes(replace(FACTS, price=D(price))) == (["PRICE_AWAY_FROM_MARKET"] if broken else [])


def test_fat_finger_reason_names_the_band_and_the_deviation() -> None:
    [reason] = evaluate(replace(FACTS, price=D(250), fat_finger_pct=D(5)))
    assert (reason["limit"], reason["value"], reason["last_price"]) == ("5", "25", "200")


@pytest.mark.parametrize(
    ("side", "quantity", "position", "broken"),
    [
        ("BUY", "100", "900", False),  # 900 + 100 = 1000: at the limit
        ("BUY", "100", "901", True),
        ("SELL", "100", "-900", False),
        ("SELL", "100", "-901", True),  # short beyond the limit
        ("SELL", "100", "1200", False),  # reducing a long that is above the limit lowers risk
        ("BUY", "100", "-1200", False),  # and so does covering part of a short
        ("SELL", "1100", "50", True),  # a flip from long to a short beyond the limit: -1050
    ],
)
def test_resulting_position_against_the_limit(
    side: str, quantity: str, position: str, broken: bool
) -> None:
    facts = replace(
        FACTS,
        side=side,
        quantity=D(quantity),
        position=D(position),
        max_position=Limit(D(1000), "desk"),
    )
    assert codes(facts) == (["POSITION_ABOVE_LIMIT"] if broken else [])


def test_approved_orders_not_yet_filled_count_toward_the_position() -> None:
    facts = replace(FACTS, position=D(500), working=D(450), max_position=Limit(D(1000), "desk"))
    [reason] = evaluate(facts)  # 500 held + 450 approved + 100 = 1050
    assert (reason["code"], reason["value"]) == ("POSITION_ABOVE_LIMIT", "1050")
    assert evaluate(replace(facts, working=D(400))) == []


def test_every_broken_rule_is_reported_in_order() -> None:
    facts = replace(
        FACTS,
        restricted=True,
        price=D(300),
        max_order_notional=Limit(D(1000), "desk"),
        max_position=Limit(D(10), "client"),
    )
    assert codes(facts) == [
        "RESTRICTED_INSTRUMENT",
        "NOTIONAL_ABOVE_LIMIT",
        "PRICE_AWAY_FROM_MARKET",
        "POSITION_ABOVE_LIMIT",
    ]


def test_the_stricter_of_desk_and_client_limits_applies() -> None:
    assert stricter(D(100), D(50)) == Limit(D(50), "client")
    assert stricter(D(100), None) == Limit(D(100), "desk")
    assert stricter(None, None) is None
