from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Query, Request, Response, status
from pydantic import BaseModel, ValidationError

from tradeops.auth.key_usage import KeyUsage
from tradeops.auth.principal import Principal
from tradeops.db.http import (
    OneStatement,
    TransactionalRoute,
    answered_in_one_statement,
    called_directly,
)
from tradeops.db.uow import ConnectionSource
from tradeops.deps import (
    API_PREFIX,
    CurrentPrincipal,
    DeclaredQueryOnly,
    RowId,
    UoW,
    answered_in_one_round_trip,
    body_as,
    caller_known,
    declared_query,
    json_body,
    one_statement_credential,
    row_id,
    session_of,
)
from tradeops.errors import Forbidden, InvalidRequest
from tradeops.idempotency.http import (
    IdempotencyKeyHeader,
    answered,
    request_fingerprint,
    respond_once,
)
from tradeops.idempotency.service import IdempotencyKeyReused, StoredResponse, valid_key
from tradeops.orders import service, workflow
from tradeops.orders.repository import AmendedBy, OrderDocument
from tradeops.orders.schemas import (
    CancelResult,
    CancelResults,
    ClientOrderId,
    OrderAmendment,
    OrderCreate,
    OrderFilters,
    OrderOut,
    OrderPage,
    OrderQuery,
    OrderStatus,
    RiskStatus,
    Side,
)
from tradeops.orders.workflow import (
    Amendment,
    ApproveRequest,
    Cancellations,
    CancelRequest,
    Decision,
    OrderEventList,
    RejectRequest,
    ReviewRequest,
)
from tradeops.problems import problem_parts, problem_responses

T = TypeVar("T")

router = APIRouter(prefix=f"{API_PREFIX}/orders", tags=["orders"], route_class=TransactionalRoute)

IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='The order version you decided on, as sent in ETag (e.g. "3"). If the order '
        "has changed since, the request fails with 409 stale-version.",
    ),
]
MAX_VERSION = 2**31 - 1  # orders.version is a PostgreSQL integer
_VERSION_TAG = re.compile(r'^(?:W/)?"?(\d{1,9})"?$', re.ASCII)
TRANSITION_ERRORS = problem_responses(
    service.OrderNotFound,
    workflow.IllegalTransition,
    workflow.StaleVersion,
    workflow.MakerCannotApprove,
    workflow.ApprovalAlreadyGiven,
    workflow.RiskCheckFailed,
    workflow.RiskCheckPending,
    IdempotencyKeyReused,
)


def _order_link(action: str, method: str, order_id: str) -> dict[str, Any]:
    """An OpenAPI link from an order's answer to `action` on that order (clients and
    schemathesis' stateful runs follow submit → get → review → approve by them)."""
    path = f"{API_PREFIX}/orders/{{order_id}}{action}".replace("/", "~1")
    return {"operationRef": f"#/paths/{path}/{method}", "parameters": {"order_id": order_id}}


def _links_from(order_id: str) -> dict[str, Any]:
    return {
        "links": {
            "GetOrder": _order_link("", "get", order_id),
            "ReviewOrder": _order_link("/review", "post", order_id),
            "ApproveOrder": _order_link("/approve", "post", order_id),
            "RejectOrder": _order_link("/reject", "post", order_id),
            "CancelOrder": _order_link("/cancel", "post", order_id),
            "GetOrderEvents": _order_link("/events", "get", order_id),
        }
    }


ORDER_LINKS_201: dict[int | str, dict[str, Any]] = {201: _links_from("$response.body#/id")}
ORDER_LINKS_200: dict[int | str, dict[str, Any]] = {200: _links_from("$response.body#/id")}


def _etag(order: OrderOut | OrderDocument) -> dict[str, str]:
    return {"ETag": f'"{order.version}"'}


def expected_version(if_match: str | None, in_body: int | None) -> int | None:
    if if_match is None or if_match.strip() == "*":
        return in_body
    match = _VERSION_TAG.match(if_match.strip())
    if match is None:
        raise InvalidRequest(
            'If-Match must be an order version such as "3".', field="header.If-Match"
        )
    return int(match.group(1))


async def _submit_order_arguments(request: Request) -> dict[str, Any] | None:
    """POST /orders' arguments as FastAPI would give them, for a JSON body that validates."""
    order = await body_as(request, OrderCreate)
    if order is None:
        return None
    session = await session_of(request)
    return {
        "order": order,
        "request": request,
        "principal": session.principal,
        "uow": session.uow,
        "idempotency_key": request.headers.get("idempotency-key"),
    }


def _submitted(
    request: Request, order: OrderOut, *, created: bool
) -> tuple[int, OrderOut, dict[str, str]]:
    """A submission's status, body and headers: 201 with its Location for a new order, 200
    for a retry (the order recorded under its client_order_id)."""
    if not created:
        return 200, order, _etag(order)
    return 201, order, {**_etag(order), "Location": f"{request.url.path}/{order.id}"}


async def _submit_order_in_one_statement(db: ConnectionSource, request: Request) -> Response | None:
    """POST /orders in one round trip (issue 15): authentication, the context and intake in
    one statement. None (the endpoint below answers, in a transaction, as documented) for a
    body that does not validate or fails a check made before writing, no credentials, or an
    order not recorded (a retry under its client_order_id, a refusal): nothing was written
    then. With an Idempotency-Key, see _submit_once_in_one_statement."""
    order = await body_as(request, OrderCreate)
    settings = request.app.state.settings
    if order is None or not service.fits_intake(order, settings.price_max_decimals):
        return None
    credential = await one_statement_credential(request)
    if credential is None:
        return None
    key = request.headers.get("idempotency-key")
    if key is not None:
        return await _submit_once_in_one_statement(db, request, order, credential, key)
    principal, submitted = await service.submit_in_one_statement(
        db, credential, order, request.app.state.key_usage
    )
    caller_known(request, principal)
    recorded = service.recorded_alone(principal, order, submitted)
    if recorded is None:
        return None
    # Committed: wake the event streams and the risk workers (migration 0027).
    assert submitted is not None  # recorded_alone answered an order: intake recorded one
    await db.after_commit(service.wakeups_of(submitted))
    status_code, shown, headers = _submitted(request, recorded, created=True)
    return Response(shown.model_dump_json(), status_code, headers, media_type="application/json")


async def _submit_once_in_one_statement(
    db: ConnectionSource,
    request: Request,
    order: OrderCreate,
    credential: dict[str, Any],
    key: str,
) -> Response | None:
    """POST /orders with an Idempotency-Key in one round trip (migration 0038): the key
    reserved, the order recorded and its response stored in one statement, or the response
    stored under the key replayed. None (the transaction answers) for a key that is not
    valid or is another request's, or an order intake did not record."""
    if not valid_key(key):
        return None
    body = await request.body()
    once = {"key": key, "fingerprint": request_fingerprint(request, body)}
    principal, read = await service.submit_once_in_one_statement(
        db, credential, order, once | {"location": request.url.path}, request.app.state.key_usage
    )
    caller_known(request, principal)
    response = service.answered_once(principal, read)
    if response is None:
        return None
    if read is not None and read.submitted is not None:  # recorded now: wake as intake does
        await db.after_commit(service.wakeups_of(read.submitted))
    return answered(response)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=OrderOut,
    responses={
        **problem_responses(
            InvalidRequest, Forbidden, service.DuplicateClientOrderId, IdempotencyKeyReused
        ),
        **ORDER_LINKS_201,
        200: {
            "model": OrderOut,
            "description": "A retry: the same order was already recorded under this "
            "client_order_id; that order, unchanged",
        },
    },
)
@answered_in_one_statement(_submit_order_in_one_statement)
@called_directly(_submit_order_arguments)
async def submit_order(
    order: OrderCreate,
    request: Request,
    principal: CurrentPrincipal,
    uow: UoW,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Submit a trade order for a client. It is recorded as **PENDING** (risk status PENDING)
    and then waits for a review and for a person with the approver role — never its maker and
    never an agent — to approve it.

    Quantities and prices are decimals: send them as strings (`"192.55"`) or JSON numbers.
    `order_type` is LIMIT unless you send MARKET: a LIMIT order needs a `price`, a MARKET
    order takes none (an order without a price is never made a MARKET order). Retry safely with an
    `Idempotency-Key` header, or with the same `client_order_id`: the same order again answers
    200 with the order recorded the first time; a different order under a used
    `client_order_id` answers 409 with the existing order's id (`existing_order_id`).
    """
    settings = request.app.state.settings

    async def create() -> tuple[int, BaseModel, dict[str, str]]:
        submitted = await service.submit_order(
            uow, principal, order, price_max_decimals=settings.price_max_decimals
        )
        return _submitted(request, submitted.order, created=submitted.created)

    return await respond_once(request, uow, idempotency_key, create)


async def _own_order_in_one_statement(db: ConnectionSource, request: Request) -> Response | None:
    """GET :by_client_order_id in one round trip (issue 15) for the caller's own order:
    authentication, the context and the read in one statement. None (the endpoint below
    answers, in a transaction, as documented) for a query it does not take, no credentials,
    or no order of the caller's under the id (404, or for an approver the one order of their
    desks under it)."""
    asked = declared_query(request)
    if asked is None:
        return None
    client_order_id = asked["client_order_id"]

    def shown(principal: Principal, found: OrderDocument | None) -> Response | None:
        own = service.shown_own_order(principal, found)
        return None if own is None else _written_document(own)

    return await answered_in_one_round_trip(
        request,
        lambda credential, key_usage: service.read_own_order(
            db, credential, client_order_id, key_usage
        ),
        shown,
    )


@router.get(
    ":by_client_order_id",
    response_model=OrderOut,
    responses={
        **problem_responses(service.OrderNotFound, service.AmbiguousClientOrderId),
        **ORDER_LINKS_200,
    },
)
@answered_in_one_statement(_own_order_in_one_statement)
async def get_order_by_client_order_id(
    principal: CurrentPrincipal,
    uow: UoW,
    client_order_id: Annotated[ClientOrderId, Query(description="The id its maker gave it")],
) -> Response:
    """Your own order by the `client_order_id` you gave it; an approver also finds the one order
    of their desks under it (409 ambiguous-client-order-id, with `order_ids`, if several makers
    used it: list them with the `client_order_id` filter)."""
    order = await service.get_order_by_client_order_id(uow, principal, client_order_id)
    return _order_document(order)


def _order_document(order: OrderOut) -> Response:
    # Serialized once, here: the model was validated when it was built.
    return Response(order.model_dump_json(), media_type="application/json", headers=_etag(order))


def _written_document(order: OrderDocument) -> Response:
    # As PostgreSQL wrote it (migration 0026): the bytes _order_document writes.
    return Response(order.document, media_type="application/json", headers=_etag(order))


def _order_read_in_one_statement(
    read: Callable[
        [ConnectionSource, dict[str, Any], int, KeyUsage], Awaitable[tuple[Principal, T]]
    ],
    shown: Callable[[Principal, T, int], Response],
) -> OneStatement:
    """A read of one order (issue 15) in one round trip: authentication, the context and the
    read in one statement; None (the endpoint answers) for a malformed id or no credentials,
    whose 422 or 401 FastAPI writes as documented."""

    async def answer(db: ConnectionSource, request: Request) -> Response | None:
        order_id = row_id(request.path_params["order_id"])
        if order_id is None:
            return None
        return await answered_in_one_round_trip(
            request,
            lambda credential, key_usage: read(db, credential, order_id, key_usage),
            lambda principal, found: shown(principal, found, order_id),
        )

    return answer


# GET /orders/{id}: the document PostgreSQL wrote (migration 0026).
_get_order_in_one_statement = _order_read_in_one_statement(
    service.read_order,
    lambda principal, found, order_id: _written_document(
        service.shown_order(principal, found, order_id)
    ),
)


@router.get(
    "/{order_id}",
    response_model=OrderOut,
    responses={**problem_responses(service.OrderNotFound), **ORDER_LINKS_200},
)
@answered_in_one_statement(_get_order_in_one_statement)
async def get_order(order_id: RowId, principal: CurrentPrincipal, uow: UoW) -> Response:
    """One order, with its status, risk status, fills and `version` (also sent as the ETag)."""
    return _order_document(await service.get_order(uow, principal, order_id))


def _listed(request: Request, after: str | None, limit: int | None, **filters: Any) -> OrderQuery:
    """The page a list's query asks for: `limit` orders (the configured page size if none)
    after the cursor `after`, with `filters`."""
    size = limit or request.app.state.settings.page_size_default
    return OrderQuery(limit=size, after=after, filters=OrderFilters(**filters))


async def _list_in_one_statement(db: ConnectionSource, request: Request) -> Response | None:
    """GET /orders in one round trip (issue 15): authentication, the context and the page
    in one statement; None (the endpoint below answers) for a query the endpoint refuses (an
    unknown name, a value or a cursor that does not validate) or no credentials, whose 422
    or 401 it writes as documented."""
    asked = declared_query(request)
    if asked is None:
        return None
    wanted = _listed(request, **asked)
    try:
        after = service.list_after(wanted)
    except InvalidRequest:
        return None
    return await answered_in_one_round_trip(
        request,
        lambda credential, key_usage: service.read_order_page(
            db, credential, wanted, after, key_usage
        ),
        lambda principal, page: Response(
            service.shown_page(principal, page, wanted), media_type="application/json"
        ),
    )


@router.get(
    "",
    response_model=OrderPage,
    responses=problem_responses(InvalidRequest),
    dependencies=[DeclaredQueryOnly],
)
@answered_in_one_statement(_list_in_one_statement)
async def list_orders(
    request: Request,
    principal: CurrentPrincipal,
    uow: UoW,
    status: OrderStatus | None = None,
    risk_status: RiskStatus | None = None,
    client_id: str | None = Query(default=None, description="Client external id, e.g. CUST-1001"),
    symbol: str | None = None,
    side: Side | None = None,
    client_order_id: str | None = Query(default=None, description="The id its maker gave it"),
    desk: str | None = Query(default=None, description="Desk code, e.g. EQ-US"),
    created_from: datetime | None = Query(default=None, description="Inclusive, ISO 8601"),
    created_to: datetime | None = Query(default=None, description="Exclusive, ISO 8601"),
    after: str | None = Query(default=None, description="next_cursor of the previous page"),
    limit: Annotated[int | None, Query(ge=1, le=500)] = None,
) -> OrderPage:
    """Orders of your desks, newest first, one page at a time (follow `next_cursor`, with the
    same filters). Filters combine; one that names no client, symbol or desk of yours answers
    an empty page. With `created_from` or `created_to` the newest are by creation time, and
    the cursor holds it. A query parameter not listed here is a 422."""
    wanted = _listed(
        request,
        after,
        limit,
        status=status,
        risk_status=risk_status,
        client_id=client_id,
        symbol=symbol,
        side=side,
        client_order_id=client_order_id,
        desk=desk,
        created_from=created_from,
        created_to=created_to,
    )
    return await service.list_orders(uow, principal, wanted)


async def _decide(
    request: Request,
    uow: UoW,
    principal: CurrentPrincipal,
    decision: Decision,
    idempotency_key: str | None,
) -> Response:
    async def change() -> tuple[int, BaseModel, dict[str, str]]:
        changed = await workflow.transition_order(uow, principal, decision)
        return 200, changed, _etag(changed)

    return await respond_once(request, uow, idempotency_key, change)


async def _decision_asked(
    request: Request, transition: workflow.Transition, taken: type[BaseModel]
) -> Decision | None:
    """The decision a request asks for, as its endpoint takes it from the path, the body
    (`taken`; none: its defaults) and If-Match; None when FastAPI or the endpoint would
    refuse them (a 422)."""
    order_id = row_id(request.path_params["order_id"])
    body = (await json_body(request)) if await request.body() else {}
    if order_id is None or not isinstance(body, dict):
        return None
    try:
        said = taken.model_validate(body).model_dump()
        version = expected_version(request.headers.get("if-match"), said.pop("expected_version"))
    except (ValidationError, InvalidRequest):
        return None
    if version is not None and version > MAX_VERSION:
        return None  # no order has it: the transaction answers stale-version, as always
    return Decision(order_id, transition, version, **said)


KeyedWrite = Callable[
    [dict[str, Any], dict[str, str], KeyUsage], Awaitable[tuple[Principal, StoredResponse | None]]
]


async def _keyed_in_one_statement(
    request: Request, key: str, write: KeyedWrite, **once: str
) -> Response | None:
    """A decision or an amendment sent with an Idempotency-Key in one round trip (migration
    0043): `write` is given the credential and the key with the request's fingerprint (and
    `once`); it answers the response it stored or replayed. None (the transaction answers)
    for a key that is not valid or that another request took."""
    if not valid_key(key):
        return None
    fingerprint = request_fingerprint(request, await request.body())
    return await answered_in_one_round_trip(
        request,
        lambda credential, key_usage: write(
            credential, {"key": key, "fingerprint": fingerprint, **once}, key_usage
        ),
        lambda _, stored: None if stored is None else answered(stored),
    )


def _decided_in_one_statement(
    transition: workflow.Transition, taken: type[BaseModel]
) -> OneStatement:
    """A decision's endpoint in one round trip (issue 15): authentication, the context, the
    order's lock, its change and its document in one statement; with an Idempotency-Key,
    the key reserved and the response stored with them (or the stored one replayed). None
    (the endpoint answers, in a transaction, as documented) for an id, body, If-Match or key
    it does not take, no credentials, a key another request took, or a decision not
    recorded (a caller who may not, an order a rule refuses, not found, or at another
    version): nothing was written."""

    async def decided(db: ConnectionSource, request: Request) -> Response | None:
        decision = await _decision_asked(request, transition, taken)
        if decision is None:
            return None
        key = request.headers.get("idempotency-key")
        if key is not None:
            return await _keyed_in_one_statement(
                request,
                key,
                lambda credential, once, key_usage: workflow.decide_once_in_one_statement(
                    db, credential, decision, once, key_usage
                ),
            )
        return await answered_in_one_round_trip(
            request,
            lambda credential, key_usage: workflow.decide_in_one_statement(
                db, credential, decision, key_usage
            ),
            lambda _, order: None if order is None else _written_document(order),
        )

    return decided


@router.post(
    "/{order_id}/review",
    response_model=OrderOut,
    responses={**TRANSITION_ERRORS, **ORDER_LINKS_200},
)
@answered_in_one_statement(_decided_in_one_statement(workflow.REVIEW, ReviewRequest))
async def review_order(
    order_id: RowId,
    request: Request,
    principal: CurrentPrincipal,
    uow: UoW,
    body: ReviewRequest | None = None,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Review a PENDING order → REVIEWED. Traders, approvers and agents may review; an agent's
    review is its recommendation (`recommendation` APPROVE or REJECT, and a `note` with the
    rationale), shown to the approver. The order then waits for a person to approve it."""
    body = body or ReviewRequest()
    decision = Decision(
        order_id,
        workflow.REVIEW,
        expected_version(if_match, body.expected_version),
        note=body.note,
        recommendation=body.recommendation,
    )
    return await _decide(request, uow, principal, decision, idempotency_key)


@router.post("/{order_id}/approve", response_model=OrderOut, responses=TRANSITION_ERRORS)
@answered_in_one_statement(_decided_in_one_statement(workflow.APPROVE, ApproveRequest))
async def approve_order(
    order_id: RowId,
    request: Request,
    principal: CurrentPrincipal,
    uow: UoW,
    body: ApproveRequest | None = None,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Approve a REVIEWED order. Only a signed-in approver of the order's desk who did not
    submit it; never with an API key; not if its risk check FAILED or is still PENDING (only
    PASSED). An order needs `approvals_required` approvals from distinct people (its desk's
    approval policy when it was submitted): each is recorded in `approvals`, the last one
    makes it APPROVED (ready for execution); one before the last leaves it REVIEWED with a new
    version. Approving twice is 409 approval-already-given. Send the version you saw as
    If-Match: of concurrent final approvals exactly one wins."""
    body = body or ApproveRequest()
    decision = Decision(
        order_id,
        workflow.APPROVE,
        expected_version(if_match, body.expected_version),
        note=body.note,
    )
    return await _decide(request, uow, principal, decision, idempotency_key)


@router.post("/{order_id}/reject", response_model=OrderOut, responses=TRANSITION_ERRORS)
@answered_in_one_statement(_decided_in_one_statement(workflow.REJECT, RejectRequest))
async def reject_order(
    order_id: RowId,
    body: RejectRequest,
    request: Request,
    principal: CurrentPrincipal,
    uow: UoW,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Reject a PENDING or REVIEWED order → REJECTED, with a required `reason`. Same people
    as approval: a signed-in approver who is not the order's maker."""
    decision = Decision(
        order_id,
        workflow.REJECT,
        expected_version(if_match, body.expected_version),
        reason=body.reason,
    )
    return await _decide(request, uow, principal, decision, idempotency_key)


@router.post("/{order_id}/cancel", response_model=OrderOut, responses=TRANSITION_ERRORS)
@answered_in_one_statement(_decided_in_one_statement(workflow.CANCEL, CancelRequest))
async def cancel_order(
    order_id: RowId,
    request: Request,
    principal: CurrentPrincipal,
    uow: UoW,
    body: CancelRequest | None = None,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Cancel an order that is not filled (PENDING, REVIEWED or APPROVED) → CANCELLED. The
    order's maker (or their agent's key) or an approver of its desk may cancel."""
    body = body or CancelRequest()
    decision = Decision(
        order_id,
        workflow.CANCEL,
        expected_version(if_match, body.expected_version),
        reason=body.reason,
    )
    return await _decide(request, uow, principal, decision, idempotency_key)


# GET /orders/{id}/events (migration 0037).
_history_in_one_statement = _order_read_in_one_statement(
    workflow.read_order_history,
    lambda principal, history, order_id: Response(
        workflow.shown_history(principal, history, order_id).model_dump_json(),
        media_type="application/json",
    ),
)


@router.get(
    "/{order_id}/events",
    response_model=OrderEventList,
    responses=problem_responses(service.OrderNotFound),
)
@answered_in_one_statement(_history_in_one_statement)
async def order_events(order_id: RowId, principal: CurrentPrincipal, uow: UoW) -> OrderEventList:
    """The order's history in `items`, oldest first: who did what, when, with notes and
    reasons. The whole history, in one page (an order has a handful of steps)."""
    return OrderEventList(items=await workflow.order_history(uow, principal, order_id))


async def _amended_in_one_statement(db: ConnectionSource, request: Request) -> Response | None:
    """An amendment in one round trip (issue 15): authentication, the context, the order's
    lock and its replacement in one statement, answering the new order as GET shows it;
    with an Idempotency-Key, as a decision with one. None (the endpoint answers, in a
    transaction, as documented) for an id, body or If-Match it does not take (or a price or
    expiry it refuses before writing), no credentials, a key it does not take, or an
    amendment not made (a caller who may not, an order not found, at another version or a
    rule refuses, a client_order_id taken)."""
    amendment = await _amendment_asked(request)
    if amendment is None:
        return None
    key = request.headers.get("idempotency-key")
    if key is not None:
        return await _keyed_in_one_statement(
            request,
            key,
            lambda credential, once, key_usage: workflow.amend_once_in_one_statement(
                db, credential, amendment, once, key_usage
            ),
            location=f"{API_PREFIX}/orders",
        )

    def shown(_: Principal, new: AmendedBy | None) -> Response | None:
        if new is None or new.id is None or new.version is None or new.document is None:
            return None
        headers = {"ETag": f'"{new.version}"', "Location": f"{API_PREFIX}/orders/{new.id}"}
        return Response(new.document, status.HTTP_201_CREATED, headers, "application/json")

    return await answered_in_one_round_trip(
        request,
        lambda credential, key_usage: workflow.amend_in_one_statement(
            db, credential, amendment, key_usage
        ),
        shown,
    )


async def _amendment_asked(request: Request) -> Amendment | None:
    """The amendment a request asks for, as its endpoint takes it from the path, the body
    and If-Match; None when FastAPI or the endpoint would refuse them before writing."""
    order_id = row_id(request.path_params["order_id"])
    asked = await body_as(request, OrderAmendment)
    if order_id is None or asked is None:
        return None
    try:
        version = expected_version(request.headers.get("if-match"), asked.expected_version)
        service.check_price_places(asked.price, request.app.state.settings.price_max_decimals)
        service.check_expire_at(asked.expire_at)
    except InvalidRequest:
        return None
    if version is not None and version > MAX_VERSION:
        return None  # no order has it: the transaction answers stale-version, as always
    return Amendment(
        order_id,
        quantity=asked.quantity,
        price=asked.price,
        client_order_id=asked.client_order_id,
        expected_version=version,
        expire_at=asked.expire_at,
        time_in_force=asked.time_in_force,
    )


@router.patch(
    "/{order_id}",
    status_code=status.HTTP_201_CREATED,
    response_model=OrderOut,
    responses={
        **TRANSITION_ERRORS,
        **problem_responses(InvalidRequest, Forbidden, service.DuplicateClientOrderId),
        **ORDER_LINKS_201,
    },
)
@answered_in_one_statement(_amended_in_one_statement)
async def replace_order(
    order_id: RowId,
    body: OrderAmendment,
    request: Request,
    principal: CurrentPrincipal,
    uow: UoW,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Amend an open order (PENDING, REVIEWED, APPROVED or PARTIALLY_FILLED): it becomes
    **REPLACED** (`replaced_by`; a partly filled one keeps its fills) and a new order with the
    changed `quantity`, `price`, `client_order_id`, `time_in_force` or `expire_at` (`replaces`
    the old one; same client, instrument and side) starts again at PENDING with a new risk
    check: an amended order is a new decision. Its time in force follows the rules of
    submission: GTD needs a future `expire_at` (a GTD order amended without one keeps its
    own), DAY, GTC, IOC and FOK take none; a DAY order expires at its desk's next cut-off after
    the amendment. Answers 201 with the new order (Location: its address). Only the order's
    maker (or their key with orders:write) may amend it. Send If-Match: the version you saw."""
    settings = request.app.state.settings
    amendment = Amendment(
        order_id,
        quantity=body.quantity,
        price=body.price,
        client_order_id=body.client_order_id,
        expected_version=expected_version(if_match, body.expected_version),
        expire_at=body.expire_at,
        time_in_force=body.time_in_force,
    )

    async def amend() -> tuple[int, BaseModel, dict[str, str]]:
        new = await workflow.replace_order(
            uow, principal, amendment, price_max_decimals=settings.price_max_decimals
        )
        return 201, new, {**_etag(new), "Location": f"{API_PREFIX}/orders/{new.id}"}

    return await respond_once(request, uow, idempotency_key, amend)


def cancel_results(
    done: Cancellations, request_id: str | None, instance: Callable[[int], str] | None = None
) -> CancelResults:
    """The 207 body: each order's outcome, a refusal as the problem the single cancel sends
    (its `instance` the order's cancel, or what `instance` gives for the order's id: the MCP
    tool names itself)."""
    instance = instance or (lambda order_id: f"{API_PREFIX}/orders/{order_id}/cancel")
    return CancelResults(
        results=[
            CancelResult(id=c.order_id, status=200, order=c.order)
            if c.refused is None
            else CancelResult(
                id=c.order_id,
                status=c.refused.status,
                problem=problem_parts(c.refused).document(
                    instance=instance(c.order_id), request_id=request_id
                ),
            )
            for c in done.each
        ],
        more=done.more,
    )


@router.delete(
    "",
    status_code=status.HTTP_207_MULTI_STATUS,
    response_model=CancelResults,
    responses=problem_responses(InvalidRequest, Forbidden, IdempotencyKeyReused),
)
async def cancel_orders(
    request: Request,
    principal: CurrentPrincipal,
    uow: UoW,
    client_id: str | None = Query(default=None, description="Client external id, e.g. CUST-1001"),
    symbol: str | None = None,
    side: Side | None = None,
    status: OrderStatus | None = Query(default=None, description="One of the open statuses"),
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Cancel every open order of your desks that matches the filters, each as its single
    cancel would: **207** with one result per order (`id`, `status` 200 with the `order`, or
    403/409 with the `problem`), newest first, at most 500 a call (`more`: call again). Never
    all-or-nothing (a cancel the database refuses is that order's 409 too); orders of desks
    you do not cover are never touched nor listed. A PARTIALLY_FILLED order is listed with
    409 (it cannot be cancelled; amend it instead). Retry safely with an Idempotency-Key: the
    same key replays the same 207."""
    wanted = OrderFilters(
        status=status, client_id=client_id, symbol=symbol.upper() if symbol else None, side=side
    )

    async def cancel() -> tuple[int, BaseModel, dict[str, str]]:
        done = await workflow.cancel_orders(uow, principal, wanted)
        return 207, cancel_results(done, uow.request_id), {}

    return await respond_once(request, uow, idempotency_key, cancel)
