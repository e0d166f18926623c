"""Log lines never carry credentials, whichever field or message they hide in."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from tradeops import observability
from tradeops.log_records import MAX_LINE_BYTES, REDACTED, clean_event, json_line
from tradeops.observability import configure_logging
from tradeops.settings import Settings

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
KEY = "tro_abcdefghijkl_c2VjcmV0LWtleS1zZWNyZXQta2V5"


@pytest.mark.parametrize(
    "text",
    [
        f"Bearer {JWT}",
        f"header was 'bearer {JWT[:20]}",
        f"key {KEY} refused",
        "password='hunter2-hunter2' rejected",
        'form {"password": "hunter2-hunter2"}',
        "1 validation error [type=string_too_long, input_value='hunter2-hunter2', input_type=str]",
    ],
)
def test_credentials_in_text_are_masked(text: str) -> None:
    cleaned = clean_event(None, "error", {"event": "failed", "error": text})
    assert REDACTED in cleaned["error"]
    for secret in (JWT[:12], KEY[:14], "hunter2"):
        assert secret not in str(cleaned)


@pytest.mark.parametrize(
    "name", ["authorization", "Authorization", "cookie", "set-cookie", "password", "api_key"]
)
def test_credentials_by_field_name_are_masked_at_any_depth(name: str) -> None:
    cleaned = clean_event(None, "info", {"event": "x", name: "s3cr3t", "h": {name: "s3cr3t"}})
    assert "s3cr3t" not in str(cleaned)


def test_an_ordinary_line_passes_unchanged() -> None:
    line = {"event": "request", "method": "GET", "path": "/api/v1/orders/7", "status": 200}
    assert clean_event(None, "info", line) is line


def test_a_line_is_bounded_however_large_its_fields() -> None:
    huge = {"event": "x", "level": "error", "exception": [{"frames": ["f" * 10_000] * 50}]}
    assert len(json_line(huge).encode()) <= MAX_LINE_BYTES
    assert len(json_line({"event": "y" * 100_000}).encode()) <= MAX_LINE_BYTES
    assert json.loads(json_line({"event": "y" * 100_000}))["truncated_from_bytes"] > 100_000


@pytest.mark.parametrize(
    "path", ["/api/v1/orders/7", f"/api/v1/orders?token={KEY}", "/" + "a" * 3000]
)
def test_the_json_access_line_is_the_line_structlog_renders(path: str) -> None:
    """observability.JsonAccessLines renders the access line itself (it costs a fraction of
    structlog's processor chain): the same fields, order and cleaning."""
    stream = io.StringIO()
    configure_logging(Settings(env="test", log_format="json", _env_file=None), stream=stream)  # type: ignore[call-arg]
    try:
        structlog.contextvars.bind_contextvars(request_id="req-1")
        args = ("GET", path, "/api/v1/orders/{order_id}", 200, 1.25)
        observability._access_line_by_structlog(*args)
        observability._access_line(*args)
    finally:
        structlog.contextvars.clear_contextvars()
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    by_structlog, ours = (json.loads(line) for line in stream.getvalue().splitlines())
    assert ours.pop("timestamp").endswith("Z")
    by_structlog.pop("timestamp")
    assert list(ours.items()) == list(by_structlog.items())
