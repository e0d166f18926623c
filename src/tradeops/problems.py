"""RFC 9457 problem details: the one place errors become HTTP responses."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from tradeops.db.errors import CONNECTION_FAILURES, problem_for
from tradeops.db.uow import sqlstate_of
from tradeops.errors import PROBLEM_BASE, DomainError
from tradeops.numeric_input import parse_count

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = structlog.get_logger(component="tradeops.errors")


class FieldError(BaseModel):
    field: str | None = Field(description="Dotted path of the offending field, e.g. body.quantity")
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document, as every error of this API is shaped."""

    type: str = Field(examples=[PROBLEM_BASE + "not-found"])
    title: str
    status: int
    detail: str
    instance: str
    request_id: str | None = None
    errors: list[FieldError] | None = None


def problem_bytes(
    *,
    status: int,
    slug: str,
    title: str,
    detail: str,
    instance: str,
    request_id: str | None,
    **extensions: Any,
) -> bytes:
    parts = ProblemParts(status, slug, title, detail, extensions)
    return orjson.dumps(parts.document(instance=instance, request_id=request_id))


def problem_response(
    request: Request,
    *,
    status: int,
    slug: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    content = problem_bytes(
        status=status,
        slug=slug,
        title=title,
        detail=detail,
        instance=request.url.path,
        request_id=getattr(request.state, "request_id", None),
        **extensions,
    )
    return Response(content, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _field_path(loc: tuple[Any, ...]) -> str | None:
    return ".".join(str(part) for part in loc) or None


def _validation_message(error: Mapping[str, Any]) -> str:
    kind = error.get("type")
    if kind == "extra_forbidden":
        return "Unknown field."
    if kind in ("value_error", "assertion_error") and "error" in error.get("ctx", {}):
        # The validator's own sentence, without pydantic's "Value error, " before it.
        return str(error["ctx"]["error"])
    return str(error.get("msg", "Invalid value."))


def field_errors(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic's errors as the `errors[]` of a problem: a dotted field path and a message."""
    return [
        {"field": _field_path(tuple(e.get("loc", ()))), "message": _validation_message(e)}
        for e in errors
    ]


@dataclass(frozen=True)
class ProblemParts:
    """What a problem document says about an error, whichever transport sends it."""

    status: int
    slug: str
    title: str
    detail: str
    extensions: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] | None = None

    def document(self, *, instance: str, request_id: str | None) -> dict[str, Any]:
        return {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
            "request_id": request_id,
            **self.extensions,
        }


_DATABASE_ERRORS = (
    DBAPIError,
    asyncpg.PostgresError,
    asyncpg.exceptions.DataError,
    *CONNECTION_FAILURES,
)


def problem_parts(error: BaseException) -> ProblemParts:
    """The one mapping from errors to problems: the HTTP handlers and the MCP tools use it, so
    an agent reads the same detail whichever way it called."""
    if isinstance(error, DomainError):
        extensions = dict(error.extensions)
        headers = extensions.pop("headers", None)
        return ProblemParts(
            error.status, error.slug, error.title, error.detail, extensions, headers
        )
    if isinstance(error, RequestValidationError | ValidationError):
        return ProblemParts(
            422,
            "validation-error",
            "The request is not valid",
            "One or more fields are invalid; see errors.",
            {"errors": field_errors(error.errors())},
        )
    if isinstance(error, _DATABASE_ERRORS):
        problem = problem_for(error)
        # The database's own message is for operators, never for the client.
        log.warning(
            "database error",
            status=problem.status,
            error_type=type(error).__name__,
            sqlstate=sqlstate_of(error),
            error=str(error)[:500],
        )
        retry = {"Retry-After": str(problem.retry_after)} if problem.retry_after else None
        return ProblemParts(problem.status, problem.slug, problem.title, problem.detail, {}, retry)
    log.exception("unhandled error", exc_info=error)
    return ProblemParts(
        500,
        "internal-error",
        "Internal error",
        "An unexpected error occurred; quote the request_id when reporting it.",
    )


# --- a body FastAPI could not read at all: say what to send instead -------------------------

_READS_AS = {
    "application/json": "a JSON body",
    "application/x-www-form-urlencoded": "a form",
    "multipart/form-data": "a multipart form",
}


def _sent_as_expected(expected: str, sent: str) -> bool:
    media_type = sent.split(";", 1)[0].strip().lower()
    if expected == "application/json":
        return media_type == expected or (
            media_type.startswith("application/") and media_type.endswith("+json")
        )
    return media_type in ("application/x-www-form-urlencoded", "multipart/form-data")


def _wrong_media_type(request: Request, error: RequestValidationError) -> str | None:
    """Why the body's fields could not be read: sent as another media type than the endpoint
    reads (JSON without its Content-Type, a form sent as JSON), or None."""
    body_field = getattr(request.scope.get("route"), "body_field", None)
    expected = getattr(getattr(body_field, "field_info", None), "media_type", None)
    sent = request.headers.get("content-type", "")
    body_errors = any(tuple(e.get("loc", ()))[:1] == ("body",) for e in error.errors())
    if not isinstance(expected, str) or not body_errors or _sent_as_expected(expected, sent):
        return None
    came = f"it came as {sent}" if sent else "it came without a Content-Type"
    return (
        f"This endpoint reads {_READS_AS.get(expected, expected)}: send it with "
        f"Content-Type: {expected} ({came})."
    )


def _broken_json(error: RequestValidationError) -> str | None:
    """Where a JSON body stops parsing, as an editor shows it: line and column, from 1."""
    broken = next((e for e in error.errors() if e.get("type") == "json_invalid"), None)
    if broken is None:
        return None
    body = error.body
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    position = int(broken["loc"][-1])
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    reason = broken.get("ctx", {}).get("error", "invalid syntax")
    return f"The body is not valid JSON: {reason} at line {line}, column {column}."


def unreadable_body(request: Request, error: RequestValidationError) -> ProblemParts | None:
    """The problem for a request body that could not be read at all, naming the fix; None
    when the body was read and only its fields are invalid."""
    for field_name, detail in (
        ("header.Content-Type", _wrong_media_type(request, error)),
        ("body", _broken_json(error)),
    ):
        if detail is not None:
            errors = [{"field": field_name, "message": detail}]
            return ProblemParts(
                422, "validation-error", "The request is not valid", detail, {"errors": errors}
            )
    return None


def located(request: Request, extensions: dict[str, Any]) -> dict[str, Any]:
    """A domain error names the command's field (`price`), as an MCP caller sends it; over
    HTTP that field is in the body, or for a read in the query string (`body.price`). A field
    a transport named itself (`header.If-Match`) stays as it is."""
    errors = extensions.get("errors")
    if not errors:
        return extensions
    where = "query" if request.method in ("GET", "HEAD") else "body"
    return extensions | {
        "errors": [
            e | {"field": f"{where}.{e['field']}"} if _unplaced(e.get("field")) else e
            for e in errors
        ]
    }


_LOCATIONS = ("body", "query", "header", "path", "form", "cookie")


def _unplaced(field_name: object) -> bool:
    return isinstance(field_name, str) and field_name.split(".", 1)[0] not in _LOCATIONS


async def on_error(request: Request, exc: Exception) -> Response:
    parts = problem_parts(exc)
    extensions = parts.extensions
    if isinstance(exc, RequestValidationError):
        parts = unreadable_body(request, exc) or parts
        extensions = parts.extensions
    elif isinstance(exc, DomainError):
        extensions = located(request, extensions)
    return problem_response(
        request,
        status=parts.status,
        slug=parts.slug,
        title=parts.title,
        detail=parts.detail,
        headers=parts.headers,
        **extensions,
    )


_HTTP_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Not allowed"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("payload-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    slug, title = _HTTP_SLUGS.get(exc.status_code, ("http-error", "HTTP error"))
    detail = exc.detail if isinstance(exc.detail, str) else title
    return problem_response(
        request,
        status=exc.status_code,
        slug=slug,
        title=title,
        detail=detail,
        headers=dict(exc.headers) if exc.headers else None,
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, on_http_error)
    # DataError: raised by the driver before sending (a value out of a column type's range).
    for error in (RequestValidationError, DomainError, *_DATABASE_ERRORS):
        app.add_exception_handler(error, on_error)
    app.add_exception_handler(Exception, on_error)


def document_problems(app: FastAPI) -> None:
    """Document every error response in the OpenAPI schema as it is sent: a Problem, as
    application/problem+json (FastAPI would describe 422s as its own `HTTPValidationError`)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(problem.pop("$defs", {}))
        schemas["Problem"] = problem
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                if operation.get("security"):
                    operation["responses"].setdefault(
                        "401", {"description": "No, expired or revoked credentials"}
                    )
        for status_responses in _error_responses(schema):
            status_responses["content"] = {
                PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}
            }
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _error_responses(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        response
        for path in schema.get("paths", {}).values()
        for operation in path.values()
        for status, response in operation.get("responses", {}).items()
        if (parse_count(status, max_digits=3) or 0) >= 400
    ]


def problem_responses(*errors: type[DomainError]) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry of an endpoint, listing the problems it may answer with."""
    documented: dict[int | str, dict[str, Any]] = {}
    for error in errors:
        entry = documented.setdefault(
            error.status,
            {"model": Problem, "description": ""},
        )
        entry["description"] = "; ".join(
            part for part in (entry["description"], f"{error.title} ({error.type_uri()})") if part
        )
    return documented
