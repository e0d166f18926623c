"""MCP over streamable HTTP at /mcp, in the API's own process, for agents with an API key.

Every HTTP request is authenticated before the MCP SDK sees it: no key, or a key that is
unknown, revoked, expired or whose owner is inactive, is a 401 problem. A person's access
token is refused too: MCP is the agents' door, and an agent is a key (people use the API or
the approver pages). The principal found rides on the request to the tool calls, whose own
transaction starts by setting it as the context.

Stateless, with JSON responses: no session lives in a process, so any API process (or
machine) answers any request, as for the rest of the API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.security.utils import get_authorization_scheme_param
from mcp.server import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tradeops.agents.server import Caller, build_server
from tradeops.auth.authentication import authenticate, unauthenticated
from tradeops.auth.keys import parse_key
from tradeops.auth.principal import Principal
from tradeops.db.replicas import ReadReplica
from tradeops.db.uow import UnitOfWork, in_transaction
from tradeops.settings import Settings

MCP_PATH = "/mcp"


def _credential(request: Request) -> str:
    scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    credential = token if scheme.lower() == "bearer" else request.headers.get("X-API-Key")
    if not credential:
        raise unauthenticated("Send an agent's API key: Authorization: Bearer tro_...")
    if parse_key(credential) is None:
        raise unauthenticated(
            "The MCP endpoint takes an agent's API key (tro_...), not a person's access token."
        )
    return credential


class McpEndpoint:
    """The /mcp route: authenticate, then hand the request to the SDK's session manager.

    Our errors (401, a database that is down) are raised, so the app's problem handlers
    answer them like any other request's.
    """

    path = MCP_PATH

    def __init__(self, sessions: StreamableHTTPSessionManager) -> None:
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # FastAPI records only its own routes in the scope; name this one for the access log
        # and the metrics (observability.route_template reads its `path`).
        scope["route"] = self
        request = Request(scope)
        credential = _credential(request)
        tokens, request_id = request.app.state.tokens, request.state.request_id

        key_usage = request.app.state.key_usage

        async def check(uow: UnitOfWork) -> Principal:
            return await authenticate(uow, credential, tokens, request_id, key_usage)

        principal = await in_transaction(request.app.state.db, check)
        request.state.principal = principal
        await self.sessions.handle_request(scope, receive, send)
        # Tools run on the primary; any call may have written, so the caller's reads over
        # HTTP stay on the primary for a while, as after an HTTP write (db/replicas.py).
        replica: ReadReplica | None = request.app.state.read_replica
        if replica is not None:
            replica.note_write(principal.user_id)


def http_caller(ctx: ServerRequestContext[Any, Any]) -> Caller:
    """The caller of a tool over HTTP: the principal McpEndpoint authenticated."""
    request = ctx.request
    assert isinstance(request, Request), "MCP over HTTP carries the HTTP request"
    principal: Principal = request.state.principal
    request_id: str | None = request.state.request_id

    async def identify(uow: UnitOfWork) -> Principal:
        await uow.set_context(principal, request_id)
        return principal

    state = request.app.state
    return Caller(state.db, identify, "http", request_id, state.order_events)


def mount_mcp(app: FastAPI, settings: Settings) -> None:
    """Serve the tools at /mcp; `running_mcp(app)` must wrap the app's lifespan."""
    sessions = StreamableHTTPSessionManager(
        app=build_server(settings, http_caller),
        json_response=True,
        stateless=True,
        # DNS rebinding protection guards servers that trust whoever reaches them; this one
        # trusts only the API key in each request, which a rebound page never has.
        security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    app.state.mcp_sessions = sessions
    app.router.routes.append(Route(MCP_PATH, McpEndpoint(sessions)))
    # The SDK logs every stateless request's end at INFO; the access log already has it.
    logging.getLogger("mcp.server.streamable_http").setLevel(logging.WARNING)


@asynccontextmanager
async def running_mcp(app: FastAPI) -> AsyncIterator[None]:
    """Run the SDK's session manager (a task group for its request tasks) while the app runs.

    In a task of its own: a task group must be left by the task that entered it, and an
    app's lifespan may be entered and left by different tasks (pytest's session fixtures do).
    """
    running, stopping = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        async with app.state.mcp_sessions.run():
            running.set()
            await stopping.wait()

    task = asyncio.create_task(run(), name="mcp-sessions")
    started = asyncio.create_task(running.wait())
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if task.done():  # it failed to start: say why
        task.result()
    try:
        yield
    finally:
        stopping.set()
        await task
