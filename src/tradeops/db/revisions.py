"""The schema revision this code expects, read from the migration files themselves.

The server compares it with the database's (readiness, startup) but never migrates: reading
the files' `revision` and `down_revision` lines spares every worker importing Alembic and
Mako for one string (about 11 MB of its memory, measured against issue 15's 150 MB per
worker). tests/unit/test_revisions.py holds it equal to Alembic's own answer.
"""

from __future__ import annotations

import re
from pathlib import Path

VERSIONS = Path(__file__).resolve().parent.parent / "migrations" / "versions"
_REVISION = re.compile(r'^revision: str = "([^"]+)"$', re.MULTILINE)
_DOWN_REVISION = re.compile(r'^down_revision: str \| None = (?:"([^"]+)"|None)$', re.MULTILINE)


def head_revision() -> str | None:
    """The one revision no other revises; None without migrations."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in VERSIONS.glob("*.py"):
        source = path.read_text()
        revision, down = _REVISION.search(source), _DOWN_REVISION.search(source)
        if revision is None or down is None:
            raise RuntimeError(f"{path.name}: no revision or down_revision line")
        revisions.add(revision.group(1))
        if down.group(1):
            revised.add(down.group(1))
    heads = revisions - revised
    if len(heads) > 1:
        raise RuntimeError(f"several schema heads: {sorted(heads)}")
    return heads.pop() if heads else None
