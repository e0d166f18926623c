"""The order event stream over HTTP (Server-Sent Events), for the API and the pages alike.

No request transaction is held: the stream authenticates and finds its start in a short
transaction, then each read takes a pooled connection for one statement and gives it back,
so an idle stream holds a socket and a slot, never a database connection.

Every read of a stream runs on the primary (app.state.db), never on the read replica that
other GETs use (db/http.py): the NOTIFY that wakes a stream is sent at the primary's commit,
and a replica behind it would not yet hold the event, so the stream would find nothing and
send it only at its next look (a heartbeat later). On the primary the woken read always
finds what woke it; and "settled" (order_events_horizon()) is about the primary's
transactions in flight, which a replica's snapshot does not describe.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, FastAPI, Header, Query, Request, Security
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from tradeops.auth.authentication import authenticate, unauthenticated
from tradeops.auth.principal import Principal
from tradeops.db.notifications import Listener
from tradeops.db.uow import UnitOfWork, in_transaction
from tradeops.deps import API_PREFIX, api_key_scheme, bearer_scheme
from tradeops.errors import Forbidden, InvalidRequest, Unauthenticated
from tradeops.numeric_input import parse_count
from tradeops.orders import stream
from tradeops.problems import problem_responses
from tradeops.settings import Settings

# No request transaction: not a TransactionalRoute.
events_router = APIRouter(prefix=f"{API_PREFIX}/orders", tags=["orders"])

# A proxy (nginx) must pass each event on at once. (Cache-Control: no-store comes with every
# API answer from the request middleware.)
SSE_HEADERS = {"X-Accel-Buffering": "no"}


def install_event_streams(app: FastAPI, settings: Settings, database_url: str) -> None:
    """One listener and one set of stream slots per process (closed by `close_event_streams`)."""
    listen_url = settings.order_events_listen_url(database_url)
    app.state.order_events = Listener(listen_url, stream.CHANNEL)
    app.state.stream_slots = stream.StreamSlots(settings.streams_per_principal)


async def close_event_streams(app: FastAPI) -> None:
    listener: Listener = app.state.order_events
    await listener.close()


def last_event_id(header: str | None, query: str | None) -> int | None:
    """The header (sent by a reconnecting EventSource) wins over the query (its first URL)."""
    text = header if header is not None else query
    if text is None or text.strip() == "":
        return None
    value = parse_count(text.strip(), max_digits=18)
    if value is None:
        raise InvalidRequest(
            "Last-Event-ID must be the id of an event, a non-negative integer.",
            field="header.Last-Event-ID",
        )
    return value


async def open_event_stream(
    request: Request, identify: stream.Identify, after: int | None
) -> StreamingResponse:
    """Authenticate, find where to start and claim a slot (each may fail as a problem, before
    anything is sent); then stream until the client goes away."""
    app = request.app
    settings: Settings = app.state.settings

    async def start(uow: UnitOfWork) -> tuple[Principal, stream.Position]:
        principal = await identify(uow)
        return principal, await stream.start_position(uow, principal, after)

    principal, position = await in_transaction(app.state.db, start)
    release = app.state.stream_slots.claim(principal)
    how = stream.Follow(
        db=app.state.db,
        listener=app.state.order_events,
        identify=identify,
        heartbeat_seconds=settings.stream_heartbeat_seconds,
        retry_attempts=settings.db_retry_attempts,
    )

    async def messages() -> AsyncIterator[bytes]:
        try:
            async for message in stream.follow(how, principal, position):
                yield message
        finally:
            release()

    return StreamingResponse(
        messages(),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
        # Also when the client left before the first message (the generator never ran).
        background=BackgroundTask(release),
    )


EVENT_STREAM_EXAMPLE = (
    'id: 42\nevent: order_event\ndata: {"id":42,"order_id":7,"desk":"EQ-US",'
    '"version":3,"type":"REVIEWED","actor":"user:5/key:2",'
    '"payload":{"note":"client confirmed"},"at":"2026-11-27T15:20:01.5+00:00"}\n\n'
    ": keep-alive\n\n"
)


@events_router.get(
    "/events/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events: one `order_event` per order event, with its id",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "example": EVENT_STREAM_EXAMPLE,
                }
            },
        },
        **problem_responses(Unauthenticated, Forbidden, InvalidRequest, stream.TooManyStreams),
    },
)
async def order_event_stream(
    request: Request,
    bearer: Annotated[str | None, Security(bearer_scheme)] = None,
    api_key: Annotated[str | None, Security(api_key_scheme)] = None,
    last_event_id_header: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=32,
            description="Resume after this event (EventSource sends it when it reconnects); "
            "0: from the first event",
        ),
    ] = None,
    last_event_id_query: Annotated[
        str | None,
        Query(
            alias="last_event_id",
            max_length=32,
            description="The same, for a first connection that cannot send headers",
        ),
    ] = None,
) -> StreamingResponse:
    """The order events of your desks as they happen (Server-Sent Events), the same events
    GET /orders/{id}/events shows you. Each `order_event` carries its `id` (also the SSE
    `id:`), the order's id, desk and `version` after the event, the event's type, actor,
    payload and time. Without Last-Event-ID the stream starts now; with it, after that event,
    with nothing lost or repeated. A `: keep-alive` comment comes when nothing else was sent
    for a while. At most a few streams per user or key at once (429)."""
    credential = bearer or api_key
    if not credential:
        raise unauthenticated("Send a bearer token or an API key.")
    state, request_id = request.app.state, request.state.request_id

    async def identify(uow: UnitOfWork) -> Principal:
        return await authenticate(uow, credential, state.tokens, request_id, state.key_usage)

    after = last_event_id(last_event_id_header, last_event_id_query)
    return await open_event_stream(request, identify, after)
