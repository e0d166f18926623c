"""Keyset pagination cursors: the one place a page's position is written and read.

A cursor is the sort key of the last row of a page, as whole numbers joined by dots: an id
("42"), a pair of ids ("7.19"), or an instant in microseconds since 1970 and an id
("1700000000000000.88"). Clients pass `next_cursor` back as `after` unchanged; anything else
is a 422 on `query.after`, never a 500 and never a page of someone else's guess.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from tradeops.errors import InvalidRequest
from tradeops.numeric_input import BIGINT_MAX

_KEY = r"(\d{1,19})"  # ASCII only (re.ASCII): \d alone matches "٣"
_SIGNED_KEY = r"(-?\d{1,19})"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _invalid() -> InvalidRequest:
    return InvalidRequest("Invalid cursor; pass next_cursor from a previous page.", field="after")


def encode_cursor(*keys: int) -> str:
    """The position after a row whose sort key is `keys`."""
    return ".".join(str(key) for key in keys)


def decode_cursor(
    cursor: str | None, *, keys: int = 1, signed_first: bool = False
) -> tuple[int, ...] | None:
    """The sort key a cursor holds (`keys` bigints, the first may be negative when
    `signed_first`), or None for the first page. InvalidRequest for anything else."""
    if cursor is None:
        return None
    pattern = r"\.".join([_SIGNED_KEY if signed_first else _KEY] + [_KEY] * (keys - 1))
    match = re.fullmatch(pattern, cursor, re.ASCII)
    if match is None:
        raise _invalid()
    values = tuple(int(group) for group in match.groups())
    # 19 digits may still be past bigint: such a cursor is refused, not sent to PostgreSQL.
    if any(abs(value) > BIGINT_MAX for value in values):
        raise _invalid()
    return values


def decode_id_cursor(cursor: str | None) -> int | None:
    """A cursor of one id (orders, audit events), or None for the first page."""
    key = decode_cursor(cursor)
    return None if key is None else key[0]


def instant_key(instant: datetime) -> int:
    """A timestamp as a cursor key: microseconds since 1970."""
    return (instant - _EPOCH) // timedelta(microseconds=1)


def key_instant(key: int) -> datetime:
    """The timestamp a cursor key holds; InvalidRequest when no datetime is that far out."""
    try:
        return _EPOCH + timedelta(microseconds=key)
    except OverflowError:
        raise _invalid() from None
