"""MCP over stdio (`tradeops mcp`), for desktop agent clients that launch the server.

The client starts one process per agent and talks JSON-RPC over its stdin and stdout; the
API key comes from TRADEOPS_API_KEY. The key is checked at start, so a wrong one fails at
once with a message on stderr, and again in every tool call's transaction, so a key revoked
while the process runs stops working at its next call.
"""

from __future__ import annotations

import uuid
from typing import Any

from mcp.server import ServerRequestContext
from mcp.server.stdio import stdio_server

from tradeops.agents.server import Caller, build_server
from tradeops.auth.authentication import authenticate
from tradeops.auth.key_usage import KeyUsage
from tradeops.auth.keys import parse_key
from tradeops.auth.principal import Principal
from tradeops.auth.tokens import TokenService
from tradeops.db.notifications import Listener
from tradeops.db.pool import Database
from tradeops.db.uow import UnitOfWork, in_transaction
from tradeops.errors import DomainError
from tradeops.orders.stream import CHANNEL
from tradeops.settings import Settings


class KeyRefused(Exception):
    """The key given to `tradeops mcp` does not authenticate: the server does not start."""


async def serve_stdio(settings: Settings, database_url: str, key: str) -> None:
    """Serve until the client closes stdin; refuse to start with a key that does not work."""
    if parse_key(key) is None:
        raise KeyRefused("TRADEOPS_API_KEY must be an agent's API key (tro_...).")
    db = Database(settings, database_url)
    tokens = TokenService(settings)
    key_usage = KeyUsage()
    # This process's own listener, started by the first call that waits.
    order_events = Listener(settings.order_events_listen_url(database_url), CHANNEL)

    async def identify(uow: UnitOfWork, request_id: str | None) -> Principal:
        return await authenticate(uow, key, tokens, request_id, key_usage)

    def caller_of(ctx: ServerRequestContext[Any, Any]) -> Caller:
        request_id = f"mcp-{uuid.uuid4().hex}"
        return Caller(db, lambda uow: identify(uow, request_id), "stdio", request_id, order_events)

    try:
        try:
            await in_transaction(db, lambda uow: identify(uow, None))
        except DomainError as refused:
            raise KeyRefused(f"TRADEOPS_API_KEY was refused: {refused.detail}") from None
        server = build_server(settings, caller_of)
        async with key_usage.flushing(db), stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        await order_events.close()
        await db.dispose()
