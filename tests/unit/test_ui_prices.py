"""How the pages write prices: to the instrument's tick, as a quote screen does."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tradeops.ui.pages import price_text


@pytest.mark.parametrize(
    ("price", "tick", "shown"),
    [
        ("415.2", "0.01", "415.20"),
        ("415", "0.01", "415.00"),
        ("1.085", "0.0001", "1.0850"),
        ("1.08500000", "0.0001", "1.0850"),  # numeric(20,6) trailing zeros are not decimals
        ("101.5", "0.5", "101.5"),
        ("4525", "25", "4,525"),
        ("1234.5", "0.05", "1,234.50"),
        ("193.1234", "0.01", "193.1234"),  # a feed's price finer than the tick keeps its digits
    ],
)
def test_a_price_has_its_ticks_decimals(price: str, tick: str, shown: str) -> None:
    assert price_text(Decimal(price), Decimal(tick)) == shown


def test_without_a_tick_a_price_is_written_as_it_is() -> None:
    assert price_text(Decimal("192.50"), None) == "192.5"
    assert price_text(None, Decimal("0.01")) == ""
