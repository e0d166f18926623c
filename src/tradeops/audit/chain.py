"""The audit hash chain, computed in Python exactly as the database trigger computes it.

Each event's hash covers the previous hash of its stream and every field, each written as
`<length>:<text>;` so no value can pass for a separator. JSON fields are hashed as
PostgreSQL renders jsonb as text, which depends only on the stored value.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

GENESIS = "0" * 64


def timestamp_text(at: datetime) -> str:
    """As the trigger renders it: UTC, microseconds, "Z". isoformat (in C) rather than
    strftime: verification renders a million of these."""
    utc = at if at.tzinfo is UTC else at.astimezone(UTC)
    return utc.isoformat(timespec="microseconds")[:-6] + "Z"


def event_hash(
    *,
    prev_hash: str,
    stream: str,
    seq: int,
    at: datetime,
    actor: str,
    api_key_id: int | None,
    request_id: str | None,
    action: str,
    entity: str,
    entity_id: str,
    before_text: str | None,
    after_text: str | None,
) -> str:
    fields = [
        prev_hash,
        stream,
        str(seq),
        timestamp_text(at),
        actor,
        "" if api_key_id is None else str(api_key_id),
        request_id or "",
        action,
        entity,
        entity_id,
        before_text or "null",
        after_text or "null",
    ]
    encoded = "".join(f"{len(field)}:{field};" for field in fields)
    return hashlib.sha256(encoded.encode()).hexdigest()


def fold_root(root: str, event_hash_hex: str) -> str:
    """The rolling hash over the global sequence: root' = sha256(root || event hash)."""
    return hashlib.sha256(bytes.fromhex(root) + bytes.fromhex(event_hash_hex)).hexdigest()


def sign_checkpoint(key: bytes, *, upto_id: int, events: int, root_hash: str, previous: str) -> str:
    message = f"{upto_id}:{events}:{root_hash}:{previous}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def signature_matches(expected: str, actual: str) -> bool:
    return hmac.compare_digest(expected, actual)
