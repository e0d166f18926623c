"""Pure rules that need no database: production secrets and the audit hash format."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from tradeops.audit.chain import GENESIS, event_hash, fold_root, sign_checkpoint, timestamp_text
from tradeops.decimals import plain
from tradeops.settings import Settings

STRONG = "x" * 40


def test_production_refuses_default_or_short_secrets() -> None:
    with pytest.raises(ValidationError, match="TRADEOPS_SECRET_KEY"):
        Settings(env="prod", audit_key=STRONG, _env_file=None)  # type: ignore[arg-type,call-arg]
    with pytest.raises(ValidationError, match="TRADEOPS_AUDIT_KEY"):
        Settings(env="prod", secret_key=STRONG, _env_file=None)  # type: ignore[arg-type,call-arg]
    with pytest.raises(ValidationError):
        Settings(env="prod", secret_key="short", audit_key=STRONG, _env_file=None)  # type: ignore[arg-type,call-arg]
    ok = Settings(env="prod", secret_key=STRONG, audit_key=STRONG, _env_file=None)  # type: ignore[arg-type,call-arg]
    assert ok.env == "prod"


def test_order_events_listen_on_a_direct_url_the_worker_may_share() -> None:
    """Behind PgBouncer one direct URL serves the worker's LISTEN and the API's."""
    pooled, direct, own = "postgresql://pgb/db", "postgresql://db/db", "postgresql://other/db"
    unset = {"listen_database_url": None, "worker_listen_database_url": None}
    settings = Settings(_env_file=None).model_copy(update=unset)  # type: ignore[call-arg]
    assert settings.order_events_listen_url(pooled) == pooled
    worker = settings.model_copy(update={"worker_listen_database_url": direct})
    assert worker.order_events_listen_url(pooled) == direct
    both = worker.model_copy(update={"listen_database_url": own})
    assert both.order_events_listen_url(pooled) == own


def test_event_hash_depends_on_every_field_and_cannot_be_shifted() -> None:
    base = {
        "prev_hash": GENESIS,
        "stream": "order:1",
        "seq": 1,
        "at": datetime(2026, 11, 23, 9, 0, tzinfo=UTC),
        "actor": "user:1",
        "api_key_id": None,
        "request_id": "r",
        "action": "order.created",
        "entity": "order",
        "entity_id": "1",
        "before_text": None,
        "after_text": '{"a": 1}',
    }
    reference = event_hash(**base)  # type: ignore[arg-type]
    assert len(reference) == 64
    for field, other in [
        ("stream", "order:2"),
        ("seq", 2),
        ("actor", "user:2"),
        ("api_key_id", 3),
        ("after_text", '{"a": 2}'),
        ("entity_id", "2"),
    ]:
        assert event_hash(**{**base, field: other}) != reference, field  # type: ignore[arg-type]
    # Moving a character between adjacent fields changes the hash (length-prefixed fields).
    shifted = {**base, "entity": "orde", "entity_id": "r1"}
    assert event_hash(**shifted) != reference  # type: ignore[arg-type]


def test_checkpoint_signature_needs_the_key() -> None:
    root = fold_root(GENESIS, "ab" * 32)
    signed = sign_checkpoint(b"k1", upto_id=5, events=5, root_hash=root, previous="")
    assert signed != sign_checkpoint(b"k2", upto_id=5, events=5, root_hash=root, previous="")
    assert signed != sign_checkpoint(b"k1", upto_id=4, events=5, root_hash=root, previous="")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("50.000000", "50"), ("192.550000", "192.55"), ("1E+2", "100"), ("0E-6", "0")],
)
def test_decimals_are_shown_plainly(raw: str, shown: str) -> None:
    from decimal import Decimal

    assert plain(Decimal(raw)) == shown


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no microseconds: still six digits
        datetime(2026, 1, 1, 1, 0, 0, 5, tzinfo=timezone(timedelta(hours=2))),  # day before, UTC
    ],
)
def test_timestamps_are_rendered_as_the_trigger_renders_them(at: datetime) -> None:
    """to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), as strftime wrote it."""
    assert timestamp_text(at) == at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
