"""A cap on request headers: 431 past TRADEOPS_MAX_HEADER_BYTES, before anyone parses them.

Two layers, because neither is enough alone. uvicorn's httptools parser (the one it picks
when installed, and ours) has no limit at all: it buffered an 8 MB Authorization header and
handed it on; only its h11 parser has one (`h11_max_incomplete_event_size`). So:

- `HeaderLimitedHttpToolsProtocol`, the protocol `tradeops serve` runs, counts the bytes of a
  request's head as they arrive and answers 431 once they pass the cap plus HEAD_SLACK_BYTES
  (room for the request line), without buffering the rest;
- the app's request context (observability.RequestContextMiddleware) checks the header
  fields (names and values) of every request against the cap in the app itself, whichever
  server runs it (tests, another ASGI server), and answers with `refuse_headers`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from tradeops.problems import problem_bytes
from tradeops.settings import get_settings

HEAD_SLACK_BYTES = 8 * 1024  # the request line (method, target, version) and line ends
DRAIN_SECONDS = 5.0  # how long a refused client may go on sending before we hang up
STATUS = 431
TITLE = "Request header fields too large"


def refusal(limit: int, instance: str, request_id: str | None) -> bytes:
    return problem_bytes(
        status=STATUS,
        slug="header-fields-too-large",
        title=TITLE,
        detail=f"The request's header fields exceed {limit} bytes.",
        instance=instance,
        request_id=request_id,
    )


async def refuse_headers(scope: Scope, send: Send, limit: int) -> None:
    """431 for header fields past `limit`, in the app, whichever server runs it (tests,
    another ASGI server); observability.RequestContextMiddleware checks every request."""
    body = refusal(limit, scope["path"], scope.get("state", {}).get("request_id"))
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": STATUS, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HeaderLimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a cap on each request's head (request line and
    headers): past it, a 431 problem and the connection closes; what else the client sends
    is read and dropped (so it reads our answer rather than a reset), for DRAIN_SECONDS."""

    max_header_bytes: int | None = None  # None: TRADEOPS_MAX_HEADER_BYTES

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limit = self.max_header_bytes or get_settings().max_header_bytes
        self._in_head = True
        self._head_bytes = 0
        self._refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._in_head and self.parser is not None:
            self._head_bytes += len(data)
            if self._head_bytes > self._limit + HEAD_SLACK_BYTES:
                self._refuse()

    def _refuse(self) -> None:
        self._refused = True
        body = refusal(self._limit, "", None)
        head = (
            f"HTTP/1.1 {STATUS} {TITLE}\r\n"
            "content-type: application/problem+json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        ).encode()
        self.transport.write(head + body)
        self.loop.call_later(DRAIN_SECONDS, self.transport.close)
