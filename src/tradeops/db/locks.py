"""Advisory locks: named, transaction-scoped, over no table.

Infrastructure, like the transaction and its savepoints (db/uow.py): a lock owns no rows, so
no domain's repository is its home. A caller names what the lock serializes (a name is
hashed to the lock's key with hashtext, as PostgreSQL's own tools do) and holds it to the end
of its transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from tradeops.db.prepared import prepare, query
from tradeops.db.uow import UnitOfWork


@dataclass(frozen=True, slots=True)
class Taken:
    taken: bool


LOCK = prepare("SELECT pg_advisory_xact_lock(hashtext(:name))")
TRY_LOCK = query("SELECT pg_try_advisory_xact_lock(hashtext(:name)) AS taken", Taken)


async def try_lock(uow: UnitOfWork, name: str) -> bool:
    """Take the lock `name` to the end of the transaction if nobody holds it; whether taken."""
    lock = await uow.row(TRY_LOCK, {"name": name})
    return lock is not None and lock.taken


async def lock(uow: UnitOfWork, name: str) -> None:
    """Take the lock `name` to the end of the transaction, waiting while another holds it."""
    await uow.execute(LOCK, {"name": name})
