"""The one parser for the numbers people type into cursors and version fields."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradeops.numeric_input import parse_count

# Every character str.isdigit() accepts that is not an ASCII digit: superscripts ('²'),
# other scripts' digits ('٣'), circled digits… int() takes some of them and refuses others.
UNICODE_DIGITS = st.characters(categories=["Nd", "No"], exclude_characters="0123456789").filter(
    str.isdigit
)


@given(st.text(alphabet=UNICODE_DIGITS, min_size=1, max_size=5), st.text("0123456789", max_size=3))
def test_only_ascii_digits_are_a_number(digits: str, ascii_prefix: str) -> None:
    assert parse_count(ascii_prefix + digits, max_digits=19) is None


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_ascii_digits_up_to_the_limit_are_their_number(number: int) -> None:
    assert parse_count(str(number), max_digits=19) == number


@pytest.mark.parametrize(
    "text", ["", " 1", "1 ", "+1", "-1", "1_000", "1e3", "0x1f", "²", "١٢", "1" * 20, "\x00"]
)
def test_anything_else_is_not_a_number(text: str) -> None:
    assert parse_count(text, max_digits=19) is None


def test_superscript_two_is_a_digit_to_python_but_not_to_int() -> None:
    """Why the parser exists: '²'.isdigit() is true, int('²') raises ValueError."""
    assert "²".isdigit() and unicodedata.digit("²") == 2
    with pytest.raises(ValueError):
        int("²")
