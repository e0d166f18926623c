"""Decimal quantities and prices at the API edge: numbers or strings in, plain strings out.

JSON floats are parsed to Decimal through their shortest representation (192.55 stays
192.55), and the database keeps numeric(20,6): at most 14 digits before the point, 6 after.
"""

from __future__ import annotations

from decimal import Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow
from fractions import Fraction
from typing import Annotated

from pydantic import Field, PlainSerializer


def plain(value: Decimal) -> str:
    """Decimal as a plain string without exponent or trailing zeros: 50.000000 → "50"."""
    return format(value.normalize(), "f")


_DECIMAL_IN = {"max_digits": 20, "decimal_places": 6, "allow_inf_nan": False}

PositiveAmount = Annotated[Decimal, Field(gt=0, **_DECIMAL_IN)]
DecimalOut = Annotated[Decimal, PlainSerializer(plain, return_type=str, when_used="json")]

# Sums and products of amounts without rounding: numeric(20,6) * numeric(20,6) needs 40
# digits, far below this precision, and any rounding would raise (Inexact is trapped).
EXACT = Context(prec=80, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])


def divide_half_even(numerator: Decimal, denominator: Decimal, places: int) -> Decimal:
    """numerator / denominator rounded half-even to `places` decimals, computed on exact
    fractions: no intermediate rounding, so no double rounding whatever the digits."""
    quotient = round(Fraction(numerator) / Fraction(denominator), places)
    return Decimal(int(quotient * 10**places)).scaleb(-places, EXACT)
