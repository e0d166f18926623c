"""Users and API keys as the API shows them (the rows their queries return)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class UserOut(BaseModel):
    id: int
    email: str
    name: str
    role: str
    active: bool
    desks: list[str]
    created_at: datetime


class ApiKeyOut(BaseModel):
    id: int
    name: str
    prefix: str
    owner_email: str
    scopes: list[str]
    desks: list[str] | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
