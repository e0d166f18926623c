"""API key format: `tro_<prefix>_<secret>`. Only the SHA-256 of the whole key is stored.

The prefix finds the row; the hash proves possession. The secret has 256 bits of entropy,
so a fast hash is enough (a slow password hash would only cost every agent request).
"""

from __future__ import annotations

import hashlib
import secrets
import string

KEY_MARKER = "tro"
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits


def generate_key() -> tuple[str, str, str]:
    """A new key: (full key to show once, prefix to store, hash to store)."""
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(12))
    key = f"{KEY_MARKER}_{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, hash_key(key)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key(candidate: str) -> str | None:
    """The prefix of something shaped like one of our keys, else None."""
    parts = candidate.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_MARKER or len(parts[1]) != 12 or not parts[2]:
        return None
    return parts[1]
