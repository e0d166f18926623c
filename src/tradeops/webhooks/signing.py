"""Standard Webhooks signatures (https://www.standardwebhooks.com/): what we send and what a
receiver checks, in one place.

The secret is `whsec_` and the base64 of random bytes; the HMAC-SHA256 key is those bytes.
The signed content is `{webhook-id}.{webhook-timestamp}.{body}`, the header
`webhook-signature: v1,<base64 of the MAC>`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def sign(secret: str, webhook_id: str, timestamp: int, body: str | bytes) -> str:
    """The webhook-signature header of one attempt."""
    content = body.encode() if isinstance(body, str) else body
    signed = f"{webhook_id}.{timestamp}.".encode() + content
    mac = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(secret: str, webhook_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """Whether any v1 signature of a webhook-signature header (space-separated) matches."""
    expected = sign(secret, webhook_id, timestamp, body).encode()
    return any(
        hmac.compare_digest(expected, candidate.encode())
        for candidate in header.split(" ")
        if candidate.startswith("v1,")
    )
