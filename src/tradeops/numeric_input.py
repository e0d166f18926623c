"""The one parser for whole numbers that arrive as text: cursors, versions, ids in tokens.

`str.isdigit()` accepts superscripts ('²') and other scripts' digits ('٣'); `int()` then
refuses some ('²' raised ValueError, a 500) and reads others as numbers nobody typed. Only
ASCII digits, and few enough of them to fit the column, are a number here.
"""

from __future__ import annotations

import re

BIGINT_MAX = 2**63 - 1  # ids and cursors are PostgreSQL bigints
_ASCII_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def parse_count(text: str, *, max_digits: int) -> int | None:
    """`text` as a non-negative int if it is 1..max_digits ASCII digits, else None."""
    if not 0 < len(text) <= max_digits or _ASCII_DIGITS.fullmatch(text) is None:
        return None
    return int(text)
