"""Statements per request, counted where they leave for the server (asyncpg's connection):
a read is its transaction's BEGIN (with the time limits), the statement that authenticates
and sets the context, the read itself and COMMIT; an idempotent replay reads the key it
could not reserve instead. A data-layer change that adds a round trip fails here."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest

from tests.factories import SEED_ORDER, Cast

API = "/api/v1"


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    sent: Counter[str] = Counter()

    def counting(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(self: asyncpg.Connection, *args: Any, **kwargs: Any) -> Any:
            sent[name] += 1
            return original(self, *args, **kwargs)

        return counted

    for name in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):
        monkeypatch.setattr(
            asyncpg.Connection, name, counting(name, getattr(asyncpg.Connection, name))
        )
    return sent


async def test_a_read_is_four_statements_and_a_replay_five(
    client: httpx.AsyncClient, cast: Cast, statements: Counter[str]
) -> None:
    headers = cast["trader"]
    again = headers | {"Idempotency-Key": "round-trips"}
    created = await client.post(f"{API}/orders", json=SEED_ORDER, headers=again)
    assert created.status_code == 201, created.text
    order = f"{API}/orders/{created.json()['id']}"

    statements.clear()
    assert (await client.get(order, headers=headers)).status_code == 200
    assert statements.total() == 4, statements

    statements.clear()
    assert (await client.get(f"{API}/orders", headers=headers)).status_code == 200
    assert statements.total() == 4, statements

    statements.clear()
    replayed = await client.post(f"{API}/orders", json=SEED_ORDER, headers=again)
    assert replayed.json()["id"] == created.json()["id"]
    assert statements.total() == 5, statements
