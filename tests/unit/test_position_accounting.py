"""Average-cost accounting against hand-computed cases, and its invariant on random trades."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradeops.decimals import divide_half_even
from tradeops.positions.accounting import FLAT, Holding, apply_fill

D = Decimal


def trade(*fills: tuple[str, str]) -> Holding:
    """Apply fills given as (signed quantity, price) to a flat position."""
    holding = FLAT
    for quantity, price in fills:
        holding = apply_fill(holding, D(quantity), D(price))
    return holding


def test_buys_add_quantity_and_cost_and_realize_nothing() -> None:
    held = trade(("10", "100"), ("20", "110"))
    assert (held.quantity, held.cost_basis, held.realized_pnl) == (D(30), D(3200), D(0))
    assert held.avg_cost == D("106.6666666667")  # 3200 / 30, half-even at 10 places


def test_partial_close_realizes_against_the_average_cost() -> None:
    # 30 held at a cost of 3200; selling 10 @ 120 takes out 3200 * 10 / 30 of cost.
    held = trade(("10", "100"), ("20", "110"), ("-10", "120"))
    assert held.quantity == D(20)
    assert held.cost_basis == D("2133.333333333333")  # 3200 - 1066.666666666667
    assert held.realized_pnl == D("133.333333333333")  # 1200 - 1066.666666666667
    assert held.avg_cost == D("106.6666666667")


def test_full_close_takes_out_the_whole_cost_so_round_trips_are_exact() -> None:
    """Bought 1 @ 10 and 2 @ 11 (cost 32), sold 3 @ 12 (36): exactly 4, not 3.9999999999."""
    held = trade(("1", "10"), ("2", "11"), ("-3", "12"))
    assert held == Holding(D(0), D(0), D(4))
    assert held.avg_cost is None


def test_partial_closes_then_the_rest_add_up_to_the_round_trip() -> None:
    held = trade(("1", "10"), ("2", "11"), ("-1", "12"), ("-2", "12"))
    assert held.realized_pnl == D(4)
    assert held.quantity == held.cost_basis == 0


def test_flip_from_long_to_short_closes_then_opens_at_the_fill_price() -> None:
    # Long 30 at 3200 cost, then sell 10 @ 120, then sell 30 @ 105: 20 close, 10 open short.
    held = trade(("10", "100"), ("20", "110"), ("-10", "120"), ("-30", "105"))
    assert held.realized_pnl == D(100)  # bought 30 for 3200, sold 30 for 1200 + 2100
    assert held.quantity == D(-10)
    assert held.cost_basis == D(-1050)
    assert held.avg_cost == D(105)


def test_short_is_opened_added_to_and_covered_in_part() -> None:
    held = trade(("-10", "50"), ("-10", "54"))
    assert (held.quantity, held.cost_basis, held.avg_cost) == (D(-20), D(-1040), D(52))
    covered = apply_fill(held, D(5), D(48))  # buy back 5 @ 48 against an average of 52
    assert covered.realized_pnl == D(20)
    assert (covered.quantity, covered.cost_basis) == (D(-15), D(-780))


def test_flip_from_short_to_long() -> None:
    held = trade(("-10", "50"), ("25", "45"))
    assert held.realized_pnl == D(50)  # covered 10 @ 45 against 50
    assert (held.quantity, held.cost_basis, held.avg_cost) == (D(15), D(675), D(45))


def test_losses_are_negative() -> None:
    assert trade(("10", "100"), ("-4", "90.5")).realized_pnl == D(-38)
    assert trade(("-10", "100"), ("4", "101.25")).realized_pnl == D(-5)


def test_large_and_tiny_amounts_stay_exact() -> None:
    """40 significant digits: Python's default 28 would round them silently."""
    held = trade(("0.000001", "0.000001"), ("12345678901234.5", "99999999999999.999999"))
    # 12345678901234.5 * (10**14 - 10**-6) + 10**-12
    assert held.cost_basis == D("1234567890123449999987654321.098765500001")
    assert held.quantity == D("12345678901234.500001")


@pytest.mark.parametrize(
    ("numerator", "denominator", "places", "expected"),
    [
        ("1", "3", 2, "0.33"),
        ("2", "3", 2, "0.67"),
        ("1", "8", 2, "0.12"),  # 0.125: a tie goes to the even neighbour
        ("3", "8", 2, "0.38"),  # 0.375: to the even neighbour, up
        ("-1", "8", 2, "-0.12"),
        ("3200", "30", 10, "106.6666666667"),
        # Just above a tie by 1e-121: rounds up (rounding first at 28 digits would tie, then
        # go to the even 0); an exact tie goes to the even 0.
        ("5" + "0" * 59 + "1", "1" + "0" * 121, 60, "1e-60"),
        ("5", "1" + "0" * 61, 60, "0"),
    ],
)
def test_divide_half_even(numerator: str, denominator: str, places: int, expected: str) -> None:
    assert divide_half_even(D(numerator), D(denominator), places) == D(expected)


def test_a_fill_has_a_quantity_and_a_positive_price() -> None:
    with pytest.raises(ValueError):
        apply_fill(FLAT, D(0), D(10))
    with pytest.raises(ValueError):
        apply_fill(FLAT, D(1), D(0))


quantities = st.decimals(min_value=-10_000, max_value=10_000, places=2).filter(lambda q: q != 0)
prices = st.decimals(min_value="0.01", max_value=1000, places=2)


@given(st.lists(st.tuples(quantities, prices), min_size=1, max_size=30), prices)
def test_realized_plus_unrealized_is_what_the_trades_made(
    fills: list[tuple[Decimal, Decimal]], mark: Decimal
) -> None:
    """Whatever the trades, realized P&L + unrealized P&L at any price = what was received
    less what was paid + what is held is worth. Only partial closes round (half a unit of
    the 12th decimal each), so the identity holds within that."""
    holding = FLAT
    for quantity, price in fills:
        holding = apply_fill(holding, quantity, price)
    cash = -sum((q * p for q, p in fills), D(0))
    unrealized = holding.quantity * mark - holding.cost_basis
    assert holding.quantity == sum((q for q, _ in fills), D(0))
    assert abs(holding.realized_pnl + unrealized - (cash + holding.quantity * mark)) <= D(
        len(fills)
    ) * D("0.5e-12")
    if holding.quantity:
        assert holding.avg_cost is not None and holding.avg_cost > 0
        assert (holding.cost_basis > 0) == (holding.quantity > 0)
    else:
        assert holding.cost_basis == 0 and holding.avg_cost is None
