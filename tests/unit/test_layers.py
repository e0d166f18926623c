"""The layers hold (issue 13 item 5): import-linter's contracts in pyproject.toml pass, and
keyset cursors are written and read in one module."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tradeops.errors import InvalidRequest
from tradeops.pagination import (
    decode_cursor,
    decode_id_cursor,
    encode_cursor,
    instant_key,
    key_instant,
)

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "tradeops"


def test_the_import_contracts_are_kept() -> None:
    # Routers, MCP, pages and CLI above services above repositories above db; no domain
    # imports a transport; no circle inside any package.
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-logo", "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


# Packages the top-level contract lists module by module (auth, desks and audit import each
# other's parts in one direction, not as wholes).
SPLIT_PACKAGES = ("auth", "audit", "desks")


def test_every_module_of_a_split_package_is_in_a_layer() -> None:
    # A module left out of the layers would be unconstrained: a new one must be placed.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    (packages,) = [c for c in contracts if c["id"] == "packages"]
    layered = {
        name.strip() for layer in packages["layers"] for name in layer.replace(":", "|").split("|")
    }
    modules = {
        f"tradeops.{package}.{path.stem}"
        for package in SPLIT_PACKAGES
        for path in (SOURCE / package).glob("*.py")
        if path.stem != "__init__"
    }
    assert modules - layered == set()


def test_the_actors_name_is_written_only_in_sql() -> None:
    # "user:7/key:3" is tradeops_actor_of (migration 0021); code passes ids, never the text,
    # so a key's idempotency and the trail's names cannot drift apart.
    writing = sorted(
        str(path.relative_to(SOURCE))
        for path in SOURCE.rglob("*.py")
        if "migrations" not in path.parts and re.search(r"f[\"']user:\{", path.read_text())
    )
    assert writing == []


def test_cursors_are_written_in_one_place() -> None:
    defining = sorted(
        str(path.relative_to(SOURCE))
        for path in SOURCE.rglob("*.py")
        if "def decode_cursor" in path.read_text() or "def encode_cursor" in path.read_text()
    )
    assert defining == ["pagination.py"]


def test_a_cursor_reads_back_what_was_written() -> None:
    assert decode_id_cursor(encode_cursor(42)) == 42
    assert decode_cursor(encode_cursor(7, 19), keys=2) == (7, 19)
    instant = datetime(2026, 11, 27, 13, 0, 0, 123456, tzinfo=UTC)
    key = decode_cursor(encode_cursor(instant_key(instant), 88), keys=2, signed_first=True)
    assert key is not None and (key_instant(key[0]), key[1]) == (instant, 88)
    before_1970 = datetime(1960, 1, 1, tzinfo=UTC)
    assert key_instant(instant_key(before_1970)) == before_1970
    assert decode_cursor(None, keys=2) is None


@pytest.mark.parametrize(
    ("cursor", "keys", "signed_first"),
    [
        ("x", 1, False),
        ("", 1, False),
        ("-1", 1, False),
        ("٣", 1, False),
        ("9223372036854775808", 1, False),  # one past bigint
        ("1", 2, False),
        ("1.2.3", 2, False),
        ("99999999999999999999.1", 2, False),
        ("-1.2", 2, False),
        ("1.2\n", 2, False),
        ("1.-2", 2, True),
        ("1.9223372036854775808", 2, True),
    ],
)
def test_a_cursor_nobody_wrote_is_refused(cursor: str, keys: int, signed_first: bool) -> None:
    with pytest.raises(InvalidRequest):
        decode_cursor(cursor, keys=keys, signed_first=signed_first)


def test_an_instant_no_datetime_holds_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        key_instant(9_000_000_000_000_000_000)
