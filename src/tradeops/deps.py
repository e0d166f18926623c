"""Typed dependencies so route signatures read as prose: `principal: CurrentPrincipal`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Request, Response, Security
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_params_to_args
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from pydantic import BaseModel, ValidationError

from tradeops.auth.authentication import authenticate, credential_parameters, unauthenticated
from tradeops.auth.key_usage import KeyUsage
from tradeops.auth.principal import Principal
from tradeops.db.http import reads_own_writes
from tradeops.db.uow import UnitOfWork, in_transaction
from tradeops.errors import InvalidRequest

API_PREFIX = "/api/v1"

# Ids in paths are PostgreSQL bigints: anything outside their range is a 422, not a 500.
MAX_ROW_ID = 2**63 - 1
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="A positive integer id")]


def row_id(text: str) -> int | None:
    """A path's id as RowId takes it (ASCII digits, 1 to MAX_ROW_ID), or None: a
    one-statement read leaves anything else to the route's own validation and its 422."""
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if 1 <= value <= MAX_ROW_ID else None


bearer_scheme = OAuth2PasswordBearer(
    tokenUrl=f"{API_PREFIX}/auth/token",
    auto_error=False,
    scheme_name="access token",
    description="A person's access token from POST /api/v1/auth/token, or an agent's API key.",
)
api_key_scheme = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="API key",
    description="An agent or service API key (tro_...); `Authorization: Bearer` also works.",
)


@dataclass(frozen=True, slots=True)
class AuthenticatedSession:
    uow: UnitOfWork
    principal: Principal


def _connection_of(request: Request) -> UnitOfWork:
    uow: UnitOfWork | None = getattr(request.state, "uow", None)
    if uow is None:  # pragma: no cover - a router without TransactionalRoute
        raise RuntimeError("database dependencies need a TransactionalRoute")
    return uow


async def authenticated_session(
    request: Request,
    bearer: Annotated[str | None, Security(bearer_scheme)],
    api_key: Annotated[str | None, Security(api_key_scheme)],
) -> AuthenticatedSession:
    """Authenticate and set the request context in the transaction's first statement: once
    per transaction (TransactionalRoute clears `request.state.session` for each attempt),
    whichever of CurrentPrincipal and UoW asks first."""
    session: AuthenticatedSession | None = getattr(request.state, "session", None)
    if session is not None:
        return session
    credential = bearer or api_key
    if not credential:
        raise unauthenticated("Send a bearer token or an API key.")
    uow = _connection_of(request)
    state = request.app.state
    principal = await authenticate(
        uow, credential, state.tokens, request.state.request_id, state.key_usage
    )
    caller_known(request, principal)
    session = request.state.session = AuthenticatedSession(uow, principal)
    return session


def caller_known(request: Request, principal: Principal) -> None:
    """Once a request's caller is known: a read replica sends a caller who wrote lately to
    the primary, and the access log names them."""
    reads_own_writes(request, principal.user_id)
    request.state.principal = principal


async def one_statement_credential(request: Request) -> dict[str, Any] | None:
    """The authenticating parameters of a one-statement read (auth.authentication.
    credential_parameters), from the same headers as CurrentPrincipal; None without any,
    for the route to answer its documented 401."""
    credential = await bearer_scheme(request) or await api_key_scheme(request)
    if not credential:
        return None
    state = request.app.state
    return credential_parameters(credential, state.tokens, request.state.request_id)


T = TypeVar("T")

# A service's one statement (credential, key usage) -> (caller, what it read or wrote), and
# the answer the caller is shown of it (None: the route's endpoint answers, in a transaction).
OneStatementCall = Callable[[dict[str, Any], KeyUsage], Awaitable[tuple[Principal, T]]]
Shown = Callable[[Principal, T], Response | None]


async def answered_in_one_round_trip(
    request: Request, call: OneStatementCall[T], shown: Shown[T]
) -> Response | None:
    """A request answered in one round trip (db.http.answered_in_one_statement): the
    credential, authenticated in the statement that reads or writes, the caller known (a
    replica may send them to the primary now), then the answer they may see; None without
    credentials, for the route to answer its documented 401."""
    credential = await one_statement_credential(request)
    if credential is None:
        return None
    principal, found = await call(credential, request.app.state.key_usage)
    caller_known(request, principal)
    return shown(principal, found)


Session = Annotated[AuthenticatedSession, Depends(authenticated_session)]


# CurrentPrincipal takes the credentials itself rather than a Session, and UoW reads them
# with the same schemes, not as dependencies: FastAPI solves a shared dependency's whole
# sub-tree again for every dependency that names it, even when its value is cached, so
# `Session` under both cost two chains of three solves (docs/benchmarks.md, "Our stack's CPU
# per request"). Every route that takes a UoW takes a CurrentPrincipal too, which puts the
# schemes in its OpenAPI security.
async def _principal(
    request: Request,
    bearer: Annotated[str | None, Security(bearer_scheme)],
    api_key: Annotated[str | None, Security(api_key_scheme)],
) -> Principal:
    return (await authenticated_session(request, bearer, api_key)).principal


async def session_of(request: Request) -> AuthenticatedSession:
    """The request's authenticated session, authenticating now with the same schemes if no
    dependency has yet (for `UoW`, and for an endpoint called directly)."""
    session: AuthenticatedSession | None = getattr(request.state, "session", None)
    if session is None:
        bearer, api_key = await bearer_scheme(request), await api_key_scheme(request)
        session = await authenticated_session(request, bearer, api_key)
    return session


async def _uow(request: Request) -> UnitOfWork:
    return (await session_of(request)).uow


async def json_body(request: Request) -> Any:
    """The request's JSON body as FastAPI reads it for a body parameter, when it is plainly
    JSON (`application/json`, parsed); None otherwise, for FastAPI to read and refuse."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        return None
    try:
        return await request.json()
    except ValueError:  # json.JSONDecodeError, UnicodeDecodeError
        return None


Body = TypeVar("Body", bound=BaseModel)


async def body_as(request: Request, model: type[Body]) -> Body | None:
    """The JSON object of the request's body as `model`, as FastAPI would take it; None when
    it is not JSON, not an object or does not validate, for FastAPI to read and refuse."""
    body = await json_body(request)
    if not isinstance(body, dict):
        return None
    try:
        return model.model_validate(body)
    except ValidationError:
        return None


CurrentPrincipal = Annotated[Principal, Depends(_principal)]
UoW = Annotated[UnitOfWork, Depends(_uow)]


async def principal_of_a_short_transaction(
    request: Request,
    bearer: Annotated[str | None, Security(bearer_scheme)],
    api_key: Annotated[str | None, Security(api_key_scheme)],
) -> Principal:
    """Authenticate in a transaction of its own, committed at once: for an operation that runs
    long in transactions of its own (verifying the audit trail) on a route without
    TransactionalRoute, so no connection is held for the request meanwhile."""
    credential = bearer or api_key
    if not credential:
        raise unauthenticated("Send a bearer token or an API key.")
    state = request.app.state

    async def authenticated(uow: UnitOfWork) -> Principal:
        return await authenticate(
            uow, credential, state.tokens, request.state.request_id, state.key_usage
        )

    principal = await in_transaction(state.db, authenticated)
    request.state.principal = principal
    return principal


# The principal of a route that holds no request transaction.
PrincipalOnly = Annotated[Principal, Depends(principal_of_a_short_transaction)]


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters an endpoint and its dependencies declare (by their alias)."""
    names = {param.alias for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_names(dependency)
    return names


# A route's declared names never change once the app is built: gathered once per route (by
# its id, with the route kept to tell a reused id apart; FastAPI's routes are not hashable).
_DECLARED_QUERY_NAMES: dict[int, tuple[APIRoute, frozenset[str]]] = {}


def _declared_query_names(route: APIRoute) -> frozenset[str]:
    known = _DECLARED_QUERY_NAMES.get(id(route))
    if known is not None and known[0] is route:
        return known[1]
    names = frozenset(_query_names(route.dependant))
    _DECLARED_QUERY_NAMES[id(route)] = (route, names)
    return names


async def _declared_query_only(request: Request, _: Session) -> None:
    """A misspelt or unsupported filter (`symbl=`, `risk_status=` where there is none) is a
    422 naming it, not silently ignored: ignored, it answers a page that only looks filtered.
    After authentication, as every other check of the query."""
    route = request.scope.get("route")
    declared = _declared_query_names(route) if isinstance(route, APIRoute) else frozenset()
    unknown = sorted(set(request.query_params) - declared)
    if unknown:
        raise InvalidRequest(
            f"Unknown query parameter {', '.join(unknown)}; this list takes"
            f" {', '.join(sorted(declared)) or 'none'}.",
            field=f"query.{unknown[0]}",
        )


# On every list endpoint: `@router.get("", dependencies=[DeclaredQueryOnly])`.
DeclaredQueryOnly = Depends(_declared_query_only)


def declared_query(request: Request) -> dict[str, Any] | None:
    """A request's query parameters as its endpoint takes them (by name, validated by
    FastAPI's own rules, a missing one its default), for a shortcut ahead of the endpoint;
    None when the endpoint would refuse them (a name it does not declare, a value that does
    not validate), for it to answer its documented 422."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return None
    if not set(request.query_params) <= _declared_query_names(route):
        return None
    values, errors = request_params_to_args(route.dependant.query_params, request.query_params)
    return None if errors else values


async def _login_uow(request: Request) -> UnitOfWork:
    uow = _connection_of(request)
    uow.request_id = request.state.request_id
    return uow


# For reading a page session's user: runs as the login role, before any principal exists.
# (Signing in itself holds no request transaction: auth/sign_in.py runs its own.)
LoginUoW = Annotated[UnitOfWork, Depends(_login_uow)]
