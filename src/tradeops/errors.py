"""Domain errors: raised by services, rendered once as RFC 9457 problems or MCP tool errors.

Each class carries its HTTP status and problem type, so routers can list them in `responses=`
and no transport has to know the business rule behind them.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "https://tradeops.dev/problems/"


class DomainError(Exception):
    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions

    @classmethod
    def type_uri(cls) -> str:
        return PROBLEM_BASE + cls.slug


class NotFound(DomainError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(DomainError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class InvalidRequest(DomainError):
    """A well-formed request that breaks a business rule about its fields."""

    status = 422
    slug = "validation-error"
    title = "The request is not valid"

    def __init__(self, detail: str, *, field: str | None = None, **extensions: Any) -> None:
        errors = [{"field": field, "message": detail}] if field else []
        super().__init__(detail, errors=errors, **extensions)


class Unauthenticated(DomainError):
    status = 401
    slug = "unauthenticated"
    title = "Authentication required"


class Forbidden(DomainError):
    status = 403
    slug = "forbidden"
    title = "Not allowed"


class TooManyRequests(DomainError):
    status = 429
    slug = "too-many-requests"
    title = "Too many requests"
