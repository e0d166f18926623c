"""The approver pages under /ui: sign-in, the queue, an order, its decisions, the audit check.

Thin like the API's routers: read the session and the form, call the same services
(orders.workflow.transition_order, …) in the request's one transaction, render (the audit
check reads in short transactions of its own).
Every POST carries the session's CSRF token; a decision carries the order version it was
made on, so deciding on an order that changed since the page was read is refused (409).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

from tradeops.audit import recording as audit
from tradeops.audit import verification
from tradeops.auth import users
from tradeops.auth.authentication import authenticate_user
from tradeops.auth.passwords import PasswordChecksBusy
from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.auth.sign_in import LoginThrottled, ThrottlePolicy
from tradeops.auth.sign_in import sign_in as sign_in_with_password
from tradeops.db.http import reads_own_writes
from tradeops.db.uow import UnitOfWork
from tradeops.deps import LoginUoW, RowId
from tradeops.errors import InvalidRequest
from tradeops.numeric_input import parse_count
from tradeops.orders import workflow
from tradeops.orders.http import last_event_id, open_event_stream
from tradeops.orders.models import RISK_STATUSES
from tradeops.orders.schemas import OrderStatus, RiskStatus
from tradeops.ui import views
from tradeops.ui.pages import (
    CsrfRefused,
    PageRoute,
    SignInRequired,
    UntransactedPageRoute,
    render,
)
from tradeops.ui.session import COOKIE, PageSession, Sessions, csrf_matches

router = APIRouter(prefix="/ui", route_class=PageRoute, include_in_schema=False)

QUEUE_PATH = "/ui/orders"
# The queue refreshes on each order event of its desks; every 5 s only if the browser cannot
# keep the event stream open (static/queue-events.js).
REFRESH_SECONDS = 5
QUEUE_EVENTS_PATH = "/ui/orders/events"
# Only our own pages are places to return to after signing in: never another site.
_NEXT = re.compile(r"^/ui(/[A-Za-z0-9/_-]*)?$")
M = TypeVar("M", bound=BaseModel)

StatusFilter = OrderStatus | Literal["", "awaiting"]
RiskFilter = RiskStatus | Literal[""]
Text = Annotated[str, Query(max_length=64)]
Done = Literal["reviewed", "approved", "approval-recorded", "rejected", "cancelled"]


@dataclass(frozen=True, slots=True)
class SignedIn:
    uow: UnitOfWork
    principal: Principal
    session: PageSession


def _sessions(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.ui_sessions
    return sessions


def _read_session(request: Request) -> PageSession | None:
    session = _sessions(request).read(request.cookies.get(COOKIE))
    request.state.page_session = session
    return session


async def signed_in(request: Request, uow: LoginUoW) -> SignedIn:
    """The person the session cookie stands for, read afresh, with the request context set."""
    session = _read_session(request)
    if session is None or session.user_id is None or session.generation is None:
        raise SignInRequired("Sign in to continue.")
    principal = await authenticate_user(
        uow, session.user_id, session.generation, request.state.request_id
    )
    # A deactivated user, one whose role changed or who signed out since, signs in again.
    if principal is None or principal.role.value != session.role:
        raise SignInRequired("Your session has ended; sign in again.")
    reads_own_writes(request, principal.user_id)
    request.state.principal = principal
    return SignedIn(uow, principal, session)


Person = Annotated[SignedIn, Depends(signed_in)]


async def checked_form(request: Request, person: Person) -> FormData:
    """The posted form, if it carries this session's CSRF token; 403 otherwise."""
    form = await request.form()
    if not csrf_matches(person.session, form.get("csrf_token")):
        raise CsrfRefused("The form is not from this session; reload the page and try again.")
    return form


CheckedForm = Annotated[FormData, Depends(checked_form)]


def safe_next(value: object) -> str:
    return value if isinstance(value, str) and _NEXT.match(value) else QUEUE_PATH


# --- signing in and out -------------------------------------------------------------------


@router.get("")
async def home() -> Response:
    return RedirectResponse(QUEUE_PATH, status_code=303)


@router.get("/sign-in")
async def sign_in_page(request: Request, next: Text = QUEUE_PATH) -> Response:
    session = _read_session(request) or _sessions(request).start()
    request.state.page_session = session
    response = render(request, "sign_in.html", next=safe_next(next), email="", error=None)
    _sessions(request).save(response, session)
    return response


# Its own router: signing in runs short transactions around the password check, not one.
sign_in_router = APIRouter(prefix="/ui", route_class=UntransactedPageRoute, include_in_schema=False)


@sign_in_router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    """The same sign-in as the API's (throttled per email, audited); the session starts afresh."""
    form = await request.form()
    session = _read_session(request)
    if not csrf_matches(session, form.get("csrf_token")):
        raise CsrfRefused("The sign-in form has expired; reload the page and try again.")
    email, password = str(form.get("email", "")), str(form.get("password", ""))
    again = {"next": safe_next(form.get("next")), "email": email}
    state = request.app.state
    try:
        signed = await sign_in_with_password(
            state.db,
            state.password_checks,
            email,
            password,
            ThrottlePolicy.of(state.settings),
            request.state.request_id,
        )
    except (LoginThrottled, PasswordChecksBusy) as error:
        page = render(request, "sign_in.html", status=error.status, error=error.detail, **again)
        page.headers.update(error.extensions.get("headers") or {})
        return page
    if signed is None:  # the failure is already counted and committed
        return render(
            request, "sign_in.html", status=401, error="Wrong email or password.", **again
        )
    response = RedirectResponse(again["next"], status_code=303)
    _sessions(request).save(response, _sessions(request).start(*signed))
    return response


@router.post("/sign-out")
async def sign_out(request: Request, person: Person, form: CheckedForm) -> Response:
    """Ends the user's page sessions, this browser's and any copy of its cookie (the user's
    other browsers too); audited beside the sign-in it closes."""
    me = person.principal
    await users.end_page_sessions(person.uow)
    await audit.record(person.uow, me, "ui.signed_out", "user", me.user_id)
    response = RedirectResponse("/ui/sign-in", status_code=303)
    _sessions(request).end(response)
    return response


# --- the queue ----------------------------------------------------------------------------


def queue_filters(
    person: Person,
    status: StatusFilter | None = None,
    desk: Text = "",
    risk_status: RiskFilter = "",
    symbol: Text = "",
    client_id: Text = "",
    after: Text = "",
) -> views.QueueFilters:
    """The queue's filters from the query string: the page and its polled rows read the same."""
    return views.QueueFilters(
        status=views.default_status(person.principal) if status is None else str(status),
        desk=desk,
        risk_status=risk_status,
        symbol=symbol.strip().upper(),
        client_id=client_id.strip(),
        after=after,
    )


Filters = Annotated[views.QueueFilters, Depends(queue_filters)]


async def _queue_context(person: SignedIn, filters: views.QueueFilters) -> dict[str, Any]:
    page = await views.queue(person.uow, person.principal, filters)
    ticks = await views.tick_sizes(person.uow, person.principal, page)
    poll = {"status": filters.status, **filters.as_query()}
    if filters.after:
        poll["after"] = filters.after
    return {
        "page": page,
        "ticks": ticks,
        "filters": filters,
        "poll_query": urlencode(poll),
        "next_query": urlencode({**poll, "after": page.next_cursor or ""}),
        "refresh_seconds": REFRESH_SECONDS,
        "events_path": QUEUE_EVENTS_PATH,
        "refreshed_at": datetime.now(UTC),
        "own_only": views.only_own_orders(person.principal),
    }


@router.get("/orders")
async def queue_page(request: Request, person: Person, filters: Filters) -> Response:
    """The queue: what awaits a decision on the person's desks (a trader: their own orders)."""
    return render(
        request,
        "queue.html",
        **await _queue_context(person, filters),
        desks=await views.desk_codes(person.uow, person.principal),
        statuses=views.QUEUED_STATUSES,
        risk_statuses=RISK_STATUSES,
    )


# The queue's live updates: its own transactions, none held while the stream is open.
stream_router = APIRouter(prefix="/ui", route_class=UntransactedPageRoute, include_in_schema=False)


@stream_router.get("/orders/events")
async def queue_events(
    request: Request,
    last_seen: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
) -> StreamingResponse:
    """The order events of the person's desks (the API's event stream, by the session
    cookie, which is sent to /ui only); the queue refreshes its rows on each."""
    session = _read_session(request)
    if session is None or session.user_id is None or session.generation is None:
        raise SignInRequired("Sign in to continue.")
    user_id, generation, role = session.user_id, session.generation, session.role
    request_id, expires_at = request.state.request_id, session.expires_at

    async def identify(uow: UnitOfWork) -> Principal:
        # Each read checks the session again: an open stream outlives neither a sign-out nor
        # the cookie's expiry.
        if time.time() >= expires_at:
            raise SignInRequired("Your session has ended; sign in again.")
        principal = await authenticate_user(uow, user_id, generation, request_id)
        if principal is None or principal.role.value != role:
            raise SignInRequired("Your session has ended; sign in again.")
        return principal

    response = await open_event_stream(request, identify, last_event_id(last_seen, None))
    response.headers["Cache-Control"] = "no-store"  # as every page
    return response


@router.get("/orders/rows")
async def queue_rows(request: Request, person: Person, filters: Filters) -> Response:
    """The queue's table alone: what the page polls to keep itself current."""
    return render(request, "_queue.html", **await _queue_context(person, filters))


# --- one order ----------------------------------------------------------------------------


@router.get("/orders/{order_id}")
async def order_page(
    request: Request, order_id: RowId, person: Person, done: Done | None = None
) -> Response:
    view = await views.order_view(person.uow, person.principal, order_id)
    return _order_page(request, view, done=done)


def _order_page(
    request: Request,
    view: views.OrderView,
    *,
    done: Done | None = None,
    confirm: views.Confirmation | None = None,
    status: int = 200,
) -> Response:
    confirm_above = request.app.state.settings.ui_confirm_notional
    return render(
        request,
        "order.html",
        status=status,
        view=view,
        done=done,
        confirm=confirm,
        asks_to_confirm=views.needs_confirming(view, confirm_above),
        confirm_above=confirm_above,
    )


def _model(model: type[M], **values: Any) -> M:
    """A workflow request model from form fields; its rules (a reason's length…) apply."""
    try:
        return model(**values)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise InvalidRequest(f"{field}: {first['msg']}", field=f"form.{field}") from None


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value.strip() or None if isinstance(value, str) else None


def _version(form: FormData) -> int | None:
    """The order version the page showed; a form without one decides on the order as it is."""
    value = _text(form, "version")
    if value is None:
        return None
    version = parse_count(value, max_digits=9)
    if version is None:
        raise InvalidRequest("version: not a version number", field="form.version")
    return version


async def _decide(person: SignedIn, decision: workflow.Decision) -> Response:
    order = await workflow.transition_order(person.uow, person.principal, decision)
    done = decision.transition.to_status.lower()
    if decision.transition is workflow.APPROVE and order.status != workflow.APPROVED:
        done = "approval-recorded"  # not the last approval the order needs
    return RedirectResponse(f"/ui/orders/{decision.order_id}?done={done}", status_code=303)


@router.post("/orders/{order_id}/review")
async def review_order(order_id: RowId, person: Person, form: CheckedForm) -> Response:
    body = _model(
        workflow.ReviewRequest,
        note=_text(form, "note"),
        recommendation=_text(form, "recommendation"),
        expected_version=_version(form),
    )
    decision = workflow.Decision(
        order_id,
        workflow.REVIEW,
        body.expected_version,
        note=body.note,
        recommendation=body.recommendation,
    )
    return await _decide(person, decision)


@router.post("/orders/{order_id}/approve")
async def approve_order(
    request: Request, order_id: RowId, person: Person, form: CheckedForm
) -> Response:
    """Above TRADEOPS_UI_CONFIRM_NOTIONAL an approval takes a second submit carrying
    confirm=1: the first (or a direct POST without it) answers 409 with the order page asking
    to confirm, and changes nothing."""
    body = _model(
        workflow.ApproveRequest, note=_text(form, "note"), expected_version=_version(form)
    )
    if form.get("confirm") != "1":
        asking = await _confirmation_page(request, person, order_id, body)
        if asking is not None:
            return asking
    decision = workflow.Decision(order_id, workflow.APPROVE, body.expected_version, note=body.note)
    return await _decide(person, decision)


async def _confirmation_page(
    request: Request, person: SignedIn, order_id: int, body: workflow.ApproveRequest
) -> Response | None:
    """The order page asking to confirm a large approval; None when there is nothing to
    confirm, or when the workflow refuses the approval anyway (or the order changed since):
    that refusal comes first."""
    view = await views.order_view(person.uow, person.principal, order_id)
    threshold: Decimal = request.app.state.settings.ui_confirm_notional
    approve = view.action("approve")
    current = body.expected_version in (None, view.order.version)
    if not (approve and not approve.refused and current):
        return None
    if not views.needs_confirming(view, threshold):
        return None
    confirm = views.Confirmation(threshold, body.note, body.expected_version)
    return _order_page(request, view, confirm=confirm, status=409)


@router.post("/orders/{order_id}/reject")
async def reject_order(order_id: RowId, person: Person, form: CheckedForm) -> Response:
    body = _model(
        workflow.RejectRequest, reason=_text(form, "reason"), expected_version=_version(form)
    )
    decision = workflow.Decision(
        order_id, workflow.REJECT, body.expected_version, reason=body.reason
    )
    return await _decide(person, decision)


@router.post("/orders/{order_id}/cancel")
async def cancel_order(order_id: RowId, person: Person, form: CheckedForm) -> Response:
    body = _model(
        workflow.CancelRequest, reason=_text(form, "reason"), expected_version=_version(form)
    )
    decision = workflow.Decision(
        order_id, workflow.CANCEL, body.expected_version, reason=body.reason
    )
    return await _decide(person, decision)


# --- the audit trail ----------------------------------------------------------------------


@router.get("/audit")
async def audit_page(request: Request, person: Person) -> Response:
    authorize(person.principal, Action.VERIFY_AUDIT)
    return render(request, "audit.html", report=None)


@router.post("/audit/verify")
async def verify_audit(request: Request, person: Person, form: CheckedForm) -> Response:
    """Check the newest signed checkpoint and the events after it (risk and admin), as the API
    does by default; its reads run in short transactions of their own."""
    settings = request.app.state.settings
    report = await verification.verify(
        request.app.state.db,
        person.principal,
        settings.audit_key.get_secret_value().encode(),
        batch=settings.audit_verify_batch,
    )
    return render(request, "audit.html", report=report)
