"""Who is acting: a person signed in, an agent's API key, or the system itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    TRADER = "trader"
    AGENT = "agent"
    APPROVER = "approver"
    RISK = "risk"
    ADMIN = "admin"
    SYSTEM = "system"


SYSTEM_USER_ID = 0

# Risk and admin oversee the bank: they see every desk (a key of theirs may narrow that).
EVERY_DESK_ROLES = (Role.RISK, Role.ADMIN)


def sees_every_desk(role_column: str) -> str:
    """The SQL condition that the user whose role is `role_column` sees every desk."""
    return f"{role_column} IN ({', '.join(repr(r.value) for r in EVERY_DESK_ROLES)})"


@dataclass(frozen=True, slots=True)
class Principal:
    """The acting identity, as every service sees it, whatever the transport."""

    user_id: int
    email: str
    role: Role
    desk_ids: frozenset[int] = field(default_factory=frozenset)
    all_desks: bool = False
    api_key_id: int | None = None
    scopes: frozenset[str] | None = None  # None: a person's token, not narrowed by scopes

    @property
    def is_agent(self) -> bool:
        return self.role is Role.AGENT

    def can_see_desk(self, desk_id: int) -> bool:
        return self.all_desks or desk_id in self.desk_ids


SYSTEM = Principal(
    user_id=SYSTEM_USER_ID, email="system@tradeops", role=Role.SYSTEM, all_desks=True
)
