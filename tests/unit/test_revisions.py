"""The server's schema head, read from the migration files, is Alembic's."""

from __future__ import annotations

import subprocess
import sys

from tradeops.db import migrate, revisions


def test_the_head_read_from_the_files_is_alembics() -> None:
    assert revisions.head_revision() == migrate.head_revision()


def test_the_application_does_not_import_alembic() -> None:
    probe = "import sys, tradeops.app; print('alembic' in sys.modules, 'mako' in sys.modules)"
    imported = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert imported.stdout.split() == ["False", "False"]
