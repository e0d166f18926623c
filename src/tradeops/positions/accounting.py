"""Average-cost accounting of one client's holding of one instrument, in exact decimals.

A holding is its signed quantity (negative: short), its cost basis (what the open quantity
cost, signed like the quantity, so a short's cost basis is what it was sold for, negated)
and the P&L realized so far. A fill that adds to the holding (or opens it) adds its cost; a
fill that reduces it takes out the cost of the quantity closed, at the average cost, and
realizes the difference to the fill price; a fill larger than the holding closes it and
opens the rest on the other side at the fill price.

Only one step rounds: the cost of a partial close (cost basis * closed / quantity), half-even
to 12 decimals, the scale of quantity * price. A full close takes out the whole cost basis,
so buying 1 @ 10 and 2 @ 11 and selling all 3 @ 12 realizes exactly 4. The average cost is
the cost basis / quantity, rounded half-even to 10 decimals for display; no P&L is computed
from it: unrealized P&L is market value - cost basis, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, localcontext

from tradeops.decimals import EXACT, divide_half_even

COST_PLACES = 12  # numeric(40,12): cost basis and realized P&L
AVG_COST_PLACES = 10  # numeric(30,10)
ZERO = Decimal(0)


@dataclass(frozen=True)
class Holding:
    quantity: Decimal
    cost_basis: Decimal
    realized_pnl: Decimal

    @property
    def avg_cost(self) -> Decimal | None:
        """Cost per unit of the open quantity (positive for longs and shorts); None when flat."""
        if self.quantity == 0:
            return None
        return divide_half_even(self.cost_basis, self.quantity, AVG_COST_PLACES)


FLAT = Holding(ZERO, ZERO, ZERO)


def signed_quantity(side: str, quantity: Decimal) -> Decimal:
    """An order's or fill's quantity as the position sees it: bought (+) or sold (-)."""
    return quantity if side == "BUY" else -quantity


def _sign(value: Decimal) -> int:
    return (value > 0) - (value < 0)


def apply_fill(holding: Holding, quantity: Decimal, price: Decimal) -> Holding:
    """The holding after a fill of `quantity` (positive: bought, negative: sold) at `price`."""
    if quantity == 0 or price <= 0:
        raise ValueError("a fill has a non-zero quantity and a positive price")
    with localcontext(EXACT):
        if holding.quantity == 0 or _sign(quantity) == _sign(holding.quantity):
            return Holding(
                holding.quantity + quantity,
                holding.cost_basis + quantity * price,
                holding.realized_pnl,
            )
        return _reduce(holding, quantity, price)


def _reduce(holding: Holding, quantity: Decimal, price: Decimal) -> Holding:
    """A fill against the holding's side: close what it can, open the rest the other way."""
    open_quantity = abs(holding.quantity)
    closed = min(abs(quantity), open_quantity)
    if closed == open_quantity:
        cost_closed = holding.cost_basis
    else:
        cost_closed = divide_half_even(holding.cost_basis * closed, open_quantity, COST_PLACES)
    # A long sells `closed` for closed * price; a short buys it back for that much.
    proceeds = _sign(holding.quantity) * closed * price
    realized = holding.realized_pnl + proceeds - cost_closed
    rest = abs(quantity) - closed  # beyond the holding: a new position on the fill's side
    if rest > 0:
        opened = _sign(quantity) * rest
        return Holding(opened, opened * price, realized)
    return Holding(holding.quantity + quantity, holding.cost_basis - cost_closed, realized)
