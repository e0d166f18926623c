"""Maker-checker: review, approve, reject, cancel. Each is one locked, conditional change.

PENDING ──review──▶ REVIEWED ──approve──▶ APPROVED ──(fills)──▶ …
   └──reject/cancel──┴──reject/cancel──▶ REJECTED / CANCELLED   (cancel also from APPROVED)
An open order (PENDING, REVIEWED, APPROVED, PARTIALLY_FILLED) may be amended by its maker:
it becomes REPLACED and a new order (`replaces` it) starts again at PENDING.

An order needs `approvals_required` approvals from distinct people (its desk's approval
policy when it was submitted); each is recorded, and the last one makes it APPROVED. One
that is not the last leaves the order REVIEWED with a new version (an APPROVAL_RECORDED
event), so an If-Match read before it is stale.

The order row is locked first, so the rules below see its current state and concurrent
deciders queue behind each other: of many final approvals exactly one wins, the rest get 409.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import asyncpg
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field

from tradeops.auth.authentication import principal_found
from tradeops.auth.key_usage import KeyUsage
from tradeops.auth.permissions import Action, authorize, who_may, who_may_all
from tradeops.auth.principal import Principal, Role
from tradeops.db.errors import MAKER_CHECKER_REFUSED, refuses_the_change
from tradeops.db.uow import ConnectionSource, UnitOfWork, one_statement, one_write
from tradeops.errors import Conflict, DomainError, Forbidden, InvalidRequest
from tradeops.idempotency.service import StoredResponse
from tradeops.jobs.defer import CHECK_ORDER_RISK, RISK_QUEUE
from tradeops.orders import repository as repo
from tradeops.orders.schemas import OrderFilters, OrderOut
from tradeops.orders.service import (
    DuplicateClientOrderId,
    OrderNotFound,
    check_expire_at,
    check_price_places,
    check_steps,
    get_order,
    list_filter_keys,
    shown_order,
    stored_response,
)
from tradeops.orders.states import OPEN_STATUSES, OrderStatus, RiskStatus

log = structlog.get_logger(component="tradeops.orders.workflow")


class IllegalTransition(Conflict):
    slug = "illegal-transition"
    title = "Not allowed in the order's current status"


class StaleVersion(Conflict):
    slug = "stale-version"
    title = "The order has changed since you read it"


class MakerCannotApprove(Forbidden):
    slug = "maker-checker"
    title = "The maker of an order cannot decide on it"


class ApprovalAlreadyGiven(Conflict):
    slug = "approval-already-given"
    title = "You have already approved this order"


class RiskCheckFailed(Conflict):
    slug = "risk-check-failed"
    title = "The order failed its pre-trade risk check"


class RiskCheckPending(Conflict):
    slug = "risk-check-pending"
    title = "The order's pre-trade risk check has not passed yet"


class RefusedByDatabase(Conflict):
    """The database refused one order's change that the rules above allowed (a race, drift,
    a rule of the database's own): its refusal of an order change (tradeops.db.errors), the
    problem the single command answers when the database's rules of orders refuse it."""

    slug = MAKER_CHECKER_REFUSED.slug
    title = MAKER_CHECKER_REFUSED.title

    def __init__(self) -> None:
        super().__init__(MAKER_CHECKER_REFUSED.detail)


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(default=None, max_length=4000, description="Why; shown to approvers")
    recommendation: Literal["APPROVE", "REJECT"] | None = Field(
        default=None, description="An agent's or reviewer's recommendation to the approver"
    )
    expected_version: int | None = Field(default=None, ge=1, description="Instead of If-Match")


class ApproveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(default=None, max_length=4000)
    expected_version: int | None = Field(default=None, ge=1)


class RejectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=4000, description="Required: why it is rejected")
    expected_version: int | None = Field(default=None, ge=1)


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=4000)
    expected_version: int | None = Field(default=None, ge=1)


@dataclass(frozen=True)
class Transition:
    name: str
    action: Action
    from_statuses: frozenset[OrderStatus]
    to_status: OrderStatus


PENDING, REVIEWED, APPROVED = OrderStatus.PENDING, OrderStatus.REVIEWED, OrderStatus.APPROVED
REVIEW = Transition("review", Action.REVIEW_ORDER, frozenset({PENDING}), REVIEWED)
APPROVE = Transition("approve", Action.APPROVE_ORDER, frozenset({REVIEWED}), APPROVED)
REJECT = Transition(
    "reject", Action.REJECT_ORDER, frozenset({PENDING, REVIEWED}), OrderStatus.REJECTED
)
CANCEL = Transition(
    "cancel", Action.CANCEL_ORDER, frozenset({PENDING, REVIEWED, APPROVED}), OrderStatus.CANCELLED
)


TRANSITIONS = (REVIEW, APPROVE, REJECT, CANCEL)
# The decisions only a checker makes, never the order's maker; and those only the maker
# makes, or someone of these roles.
CHECKERS_DECISIONS = (APPROVE, REJECT)
DECIDE_ON_OTHERS_ORDERS = {CANCEL: (Role.APPROVER, Role.SYSTEM)}
# The history's step for an approval that is not yet the last one the order needs.
APPROVAL_RECORDED = "APPROVAL_RECORDED"


@dataclass(frozen=True, slots=True)
class Decision:
    """A command to move an order on: `transition`, by someone who read it at
    `expected_version` (None: as it is now), with what the order's history keeps of it."""

    order_id: int
    transition: Transition
    expected_version: int | None = None
    note: str | None = None
    recommendation: Literal["APPROVE", "REJECT"] | None = None
    reason: str | None = None

    def history(self) -> dict[str, str]:
        """The event's payload: what was said, nothing left blank."""
        said = {"note": self.note, "recommendation": self.recommendation, "reason": self.reason}
        return {k: v for k, v in said.items() if v is not None}


def refusal(
    transition: Transition, principal: Principal, order: repo.OrderFacts
) -> DomainError | None:
    """Why `principal` may not make `transition` on `order` now, or None if they may.

    The one statement of the maker-checker rules: `transition_order` raises what this returns,
    and the approver pages show it beside a disabled button. The database holds the same
    rules (triggers of migration 0011) for every writer; should it refuse what this allowed
    (a race, drift), the caller gets 409 maker-checker-refused (tradeops.db.errors).
    `order` needs `id`, `status`, `version`, `risk_status`, `risk_reasons` and `created_by`
    (the maker's user id).
    """
    try:
        authorize(principal, transition.action)
    except Forbidden as error:
        return error
    refused = _status_refusal(transition, order)
    if refused is not None:
        return refused
    if transition in CHECKERS_DECISIONS and order.created_by == principal.user_id:
        return MakerCannotApprove(
            f"You submitted order {order.id} (yourself or through your API key); another "
            "approver must decide on it.",
            order_id=order.id,
        )
    if transition is APPROVE and principal.user_id in order.approvers:
        return already_approved(order)
    others_by = DECIDE_ON_OTHERS_ORDERS.get(transition)
    if (
        others_by is not None
        and order.created_by != principal.user_id
        and principal.role not in others_by
    ):
        return Forbidden(f"Only the order's maker or an approver may cancel order {order.id}.")
    return None


def already_approved(order: repo.OrderFacts) -> ApprovalAlreadyGiven:
    return ApprovalAlreadyGiven(
        f"You have already approved order {order.id}; it needs approvals from "
        f"{order.approvals_required} different people.",
        order_id=order.id,
        approvals_required=order.approvals_required,
    )


def _status_refusal(transition: Transition, order: repo.OrderFacts) -> DomainError | None:
    """Why the order's status or risk check rules the transition out, saying what would let
    it through: a failed check first, since no review can mend it."""
    undecided = order.status in APPROVE.from_statuses | REVIEW.from_statuses
    if transition is APPROVE and undecided and order.risk_status is RiskStatus.FAILED:
        reasons = " ".join(str(r.get("message", r.get("code"))) for r in order.risk_reasons)
        reasons = reasons or "no reason was recorded."
        return RiskCheckFailed(
            f"Order {order.id} failed its risk check and cannot be approved: {reasons} "
            "Reject it instead.",
            order_id=order.id,
            risk_reasons=order.risk_reasons,
        )
    if transition is APPROVE and order.status is PENDING:
        return IllegalTransition(
            f"Order {order.id} is PENDING: it needs a review first; once it is REVIEWED it "
            "can be approved.",
            current_status=order.status,
            current_version=order.version,
        )
    if order.status not in transition.from_statuses:
        return IllegalTransition(
            f"Order {order.id} is {order.status}; it cannot be {transition.to_status.lower()} from"
            " there.",
            current_status=order.status,
            current_version=order.version,
        )
    if transition is APPROVE and order.risk_status is not RiskStatus.PASSED:
        return RiskCheckPending(
            f"Order {order.id} is still waiting for its pre-trade risk check; approve it once "
            "the check has passed.",
            order_id=order.id,
        )
    return None


async def transition_refusals(
    uow: UnitOfWork, principal: Principal, order_id: int
) -> dict[str, DomainError | None]:
    """For each transition by name, None if the principal may make it on the order now, or
    the error they would get: what a page needs to enable or explain its buttons."""
    order = await uow.row(repo.ORDER_FACTS, {"id": order_id})
    if order is None or not principal.can_see_desk(order.desk_id):
        raise OrderNotFound(f"No order {order_id}.")
    return {t.name: refusal(t, principal, order) for t in TRANSITIONS}


async def transition_order(uow: UnitOfWork, principal: Principal, decision: Decision) -> OrderOut:
    transition, order_id = decision.transition, decision.order_id
    authorize(principal, transition.action)
    order = await repo.lock_order(uow, repo.LOCK_ORDER, order_id)
    if order is None or not principal.can_see_desk(order.desk_id):
        raise OrderNotFound(f"No order {order_id}.")
    _check_version(order, decision.expected_version)
    refused = refusal(transition, principal, order)
    if refused is not None:
        raise refused
    change = _change(transition, principal, order, decision)
    if transition is APPROVE:
        change = await _record_approval(uow, principal, order, decision, change)
    # Answered as GET shows it, so to whoever may read it (an API key may lack orders:read).
    authorize(principal, Action.READ_ORDERS)
    changed = await uow.row(repo.TRANSITION, change)
    if changed is None:  # pragma: no cover - the row is locked; kept as a guard
        raise StaleVersion(f"Order {order_id} changed while being decided; read it again.")
    return changed


def _change(
    transition: Transition, principal: Principal, order: repo.OrderFacts, decision: Decision
) -> dict[str, Any]:
    """TRANSITION's parameters for `transition` of `order` by `principal`."""
    return {
        "id": order.id,
        "version": order.version,
        "from_status": order.status,
        "reviewed_by": principal.user_id if transition is REVIEW else None,
        "approved_by": principal.user_id if transition is APPROVE else None,
        "rejected_by": principal.user_id if transition is REJECT else None,
        **_recorded(transition, decision),
    }


def _recorded(transition: Transition, decision: Decision) -> dict[str, Any]:
    """What `transition` records, whoever makes it: the order's new status, its history
    event with what was said, and the audit entry's action."""
    return {
        "to_status": transition.to_status,
        "event_type": transition.to_status,
        "payload": orjson.dumps(decision.history()).decode(),
        "action": f"order.{transition.to_status.lower()}",
    }


async def decide_in_one_statement(
    source: ConnectionSource, credential: Mapping[str, Any], decision: Decision, key_usage: KeyUsage
) -> tuple[Principal, repo.OrderDocument | None]:
    """A review, approval, rejection or cancellation in one round trip
    (repo.DECIDE_IN_ONE_STATEMENT): the caller the credential (auth.authentication.
    credential_parameters) names, 401 if none, and the order as GET shows it after the
    decision; None when nothing was written (a rule of `refusal` applies, the order is not
    on their desks, at another version than they named, or is an approval of one needing
    several), which transition_order, in a transaction, explains or makes."""
    decided = await one_write(
        source, repo.DECIDE_IN_ONE_STATEMENT, _decision_alone(credential, decision)
    )
    principal = principal_found(None if decided is None else decided.caller, key_usage)
    return principal, None if decided is None else decided.found


async def decide_once_in_one_statement(
    source: ConnectionSource,
    credential: Mapping[str, Any],
    decision: Decision,
    once: Mapping[str, str],
    key_usage: KeyUsage,
) -> tuple[Principal, StoredResponse | None]:
    """The same decision sent with an Idempotency-Key (repo.DECIDE_ONCE_IN_ONE_STATEMENT,
    `once`: the key and the request's fingerprint): the caller, 401 if none, and the
    response made and stored under the key, or the one stored with it replayed; None when
    the key is another request's (nothing was written), which the transaction refuses. A
    decision it does not make raises db.http.NOT_RECORDED_ALONE, with nothing written."""
    params = _decision_alone(credential, decision) | dict(once)
    answered = await one_write(source, repo.DECIDE_ONCE_IN_ONE_STATEMENT, params)
    principal = principal_found(None if answered is None else answered.caller, key_usage)
    return principal, stored_response(answered)


def _decision_alone(credential: Mapping[str, Any], decision: Decision) -> dict[str, Any]:
    """A one-statement decision's parameters: the credential, who may make it, and what it
    records."""
    transition = decision.transition
    others_by = DECIDE_ON_OTHERS_ORDERS.get(transition)
    return {
        **credential,
        # The answer is the order as GET shows it: whoever may decide and read it.
        **who_may_all(transition.action, Action.READ_ORDERS),
        "order_id": decision.order_id,
        "version": decision.expected_version,
        "from_statuses": sorted(transition.from_statuses),
        "checker": transition in CHECKERS_DECISIONS,
        "others_by": None if others_by is None else [role.value for role in others_by],
        "approval": transition is APPROVE,
        "note": decision.note,
        **_recorded(transition, decision),
    }


async def _record_approval(
    uow: UnitOfWork,
    principal: Principal,
    order: repo.OrderFacts,
    decision: Decision,
    change: dict[str, Any],
) -> dict[str, Any]:
    """Record the principal's approval; the change is the approval itself when it is the
    order's last one needed, else an APPROVAL_RECORDED step that only moves its version."""
    recorded = await uow.row(
        repo.RECORD_APPROVAL,
        {
            "id": order.id,
            "desk_id": order.desk_id,
            "approved_by": principal.user_id,
            "note": decision.note,
        },
    )
    assert recorded is not None  # the statement always answers one row
    if not recorded.added:  # the same person's approval, committed while they waited on the lock
        raise already_approved(order)
    # The count is history worth keeping only where more than one approval is needed.
    counted = (
        {"approvals": recorded.given, "approvals_required": order.approvals_required}
        if order.approvals_required > 1
        else {}
    )
    payload = orjson.dumps({**decision.history(), **counted}).decode()
    if recorded.given >= order.approvals_required:
        return change | {"payload": payload}
    return change | {
        "to_status": REVIEWED,
        "approved_by": None,
        "event_type": APPROVAL_RECORDED,
        "payload": payload,
        "action": "order.approval_recorded",
    }


# --- amending: the order is REPLACED by a new one --------------------------------------------


@dataclass(frozen=True, slots=True)
class Amendment:
    """A command to replace an open order by a new one with these terms (None: the old
    order's price and time in force; its unfilled rest for the quantity; no client_order_id)."""

    order_id: int
    quantity: Decimal | None = None
    price: Decimal | None = None
    client_order_id: str | None = None
    expected_version: int | None = None
    expire_at: datetime | None = None  # a GTD order's new expiry
    time_in_force: str | None = None


def replace_refusal(principal: Principal, order: repo.OrderFacts) -> DomainError | None:
    """Why `principal` may not amend `order` now. Only its maker (or the maker's key with
    orders:write) may: an amendment is a new order of theirs, so the maker-checker pairing
    stays the same (an approver who amended an order could otherwise approve their own terms).
    Others who may cancel an order still may."""
    try:
        authorize(principal, Action.SUBMIT_ORDER)
    except Forbidden as error:
        return error
    if order.status not in OPEN_STATUSES:
        return IllegalTransition(
            f"Order {order.id} is {order.status}; only an open order (PENDING, REVIEWED, "
            "APPROVED or PARTIALLY_FILLED) can be replaced.",
            current_status=order.status,
            current_version=order.version,
        )
    if order.created_by != principal.user_id:
        return Forbidden(
            f"Only the maker of order {order.id} may amend it; you may cancel it if you are an "
            "approver of its desk."
        )
    return None


@dataclass(frozen=True, slots=True)
class _Terms:
    """The replacement's amended terms, checked."""

    quantity: Decimal
    price: Decimal | None
    time_in_force: str


def _amended_terms(
    order: repo.ReplacedOrder, amendment: Amendment, price_max_decimals: int
) -> _Terms:
    """The replacement's quantity, price and time in force, checked as intake checks them
    (by field)."""
    if amendment.price is not None and order.order_type == "MARKET":
        raise InvalidRequest("A MARKET order takes no price.", field="price")
    check_price_places(amendment.price, price_max_decimals)
    quantity = amendment.quantity or order.quantity - order.filled_quantity
    price = amendment.price if amendment.price is not None else order.price
    check_steps(quantity, price, lot_size=order.lot_size, tick_size=order.tick_size)
    time_in_force = amendment.time_in_force or order.time_in_force
    _check_expiry(order.time_in_force, time_in_force, amendment.expire_at)
    return _Terms(quantity, price, time_in_force)


def _check_expiry(old: str, new: str, expire_at: datetime | None) -> None:
    """As at intake: a GTD order needs a future expire_at and only a GTD order takes one. A
    GTD order staying GTD keeps its expire_at unless a new one is sent; DAY's is computed
    (the desk's next cut-off), never given."""
    if expire_at is not None and new != "GTD":
        raise InvalidRequest(
            f"Only a GTD order takes expire_at; this one is {new}.", field="expire_at"
        )
    if expire_at is None and new == "GTD" and old != "GTD":
        raise InvalidRequest(
            f"A {old} order becoming GTD needs expire_at: when it expires if not filled.",
            field="expire_at",
        )
    check_expire_at(expire_at)


async def replace_order(
    uow: UnitOfWork, principal: Principal, amendment: Amendment, *, price_max_decimals: int = 6
) -> OrderOut:
    """Replace an open order: it becomes REPLACED (keeping any fills) and a new order with the
    amended terms starts at PENDING with a new risk check, in this one transaction."""
    authorize(principal, Action.SUBMIT_ORDER)
    order = await repo.lock_order(uow, repo.LOCK_REPLACED_ORDER, amendment.order_id)
    if order is None or not principal.can_see_desk(order.desk_id):
        raise OrderNotFound(f"No order {amendment.order_id}.")
    _check_version(order, amendment.expected_version)
    refused = replace_refusal(principal, order)
    if refused is not None:
        raise refused
    terms = _amended_terms(order, amendment, price_max_decimals)
    replacing = _replacing(amendment, uow.request_id)
    created = await uow.row(
        repo.REPLACE_ORDER,
        {
            "id": order.id,
            "version": order.version,
            "from_status": order.status,
            "quantity": terms.quantity,
            "price": terms.price,
            "time_in_force": terms.time_in_force,
            "created_by_key_id": principal.api_key_id,
            # Both orders' events carry the request's history, as in one statement (0040).
            "created_payload": replacing["payload"],
            **replacing,
        },
    )
    if created is None:  # the maker's client_order_id is taken: nothing was written
        taken = await uow.row(
            repo.ORDER_BY_CLIENT_ORDER_ID,
            {"created_by": principal.user_id, "client_order_id": amendment.client_order_id},
        )
        existing_id = None if taken is None else taken.id
        raise DuplicateClientOrderId(
            f"client_order_id {amendment.client_order_id} was already used for order "
            f"{existing_id}.",
            existing_order_id=existing_id,
        )
    return _replacement(principal, order, created, terms, amendment.client_order_id)


def _replacing(amendment: Amendment, request_id: str | None) -> dict[str, Any]:
    """REPLACE_ORDER's values however the order is replaced: the replacement's own, its
    history, and where its risk check is queued (in its own statement, as at intake)."""
    return {
        "client_order_id": amendment.client_order_id,
        "expire_at": amendment.expire_at,
        "payload": orjson.dumps({"request_id": request_id}).decode(),
        "event_type": OrderStatus.REPLACED,
        "action": "order.replaced",
        "risk_queue": RISK_QUEUE,
        "risk_task": CHECK_ORDER_RISK,
    }


async def amend_in_one_statement(
    source: ConnectionSource,
    credential: Mapping[str, Any],
    amendment: Amendment,
    key_usage: KeyUsage,
) -> tuple[Principal, repo.AmendedBy | None]:
    """An amendment in one round trip (repo.AMEND_IN_ONE_STATEMENT): the caller the
    credential names, 401 if none, and the new order (its id, and its document as GET shows
    it); None when nothing was written (a caller who may not, the order not found or at
    another version, a rule refuses it, a client_order_id taken), which replace_order, in a
    transaction, explains. For an amendment whose price and expiry passed the checks made
    before writing (check_price_places, check_expire_at)."""
    params = _amendment_alone(credential, amendment)
    amended = await one_write(source, repo.AMEND_IN_ONE_STATEMENT, params)
    principal = principal_found(None if amended is None else amended.caller, key_usage)
    return principal, None if amended is None or amended.document is None else amended


async def amend_once_in_one_statement(
    source: ConnectionSource,
    credential: Mapping[str, Any],
    amendment: Amendment,
    once: Mapping[str, str],
    key_usage: KeyUsage,
) -> tuple[Principal, StoredResponse | None]:
    """The same amendment sent with an Idempotency-Key (repo.AMEND_ONCE_IN_ONE_STATEMENT;
    `once`: the key, the request's fingerprint and the path of the new order's Location),
    as decide_once_in_one_statement."""
    params = _amendment_alone(credential, amendment) | dict(once)
    answered = await one_write(source, repo.AMEND_ONCE_IN_ONE_STATEMENT, params)
    principal = principal_found(None if answered is None else answered.caller, key_usage)
    return principal, stored_response(answered)


def _amendment_alone(credential: Mapping[str, Any], amendment: Amendment) -> dict[str, Any]:
    """A one-statement amendment's parameters: the credential, who may amend (who may submit
    orders), and the amendment."""
    return {
        **credential,
        **who_may(Action.SUBMIT_ORDER),
        "order_id": amendment.order_id,
        "version": amendment.expected_version,
        "open_statuses": sorted(OPEN_STATUSES),
        "quantity": amendment.quantity,
        "price": amendment.price,
        "time_in_force": amendment.time_in_force,
        **_replacing(amendment, credential["request_id"] or None),
    }


def _check_version(order: repo.OrderFacts, expected: int | None) -> None:
    if expected is not None and expected != order.version:
        raise StaleVersion(
            f"Order {order.id} is at version {order.version}, not {expected}; "
            "read it again and decide on what it is now.",
            current_version=order.version,
            current_status=order.status,
        )


def _replacement(
    principal: Principal,
    order: repo.ReplacedOrder,
    created: repo.Replacement,
    terms: _Terms,
    client_order_id: str | None,
) -> OrderOut:
    """The new order as the API shows it, from the old one and what the change returned."""
    return OrderOut(
        id=created.id,
        status=created.status,
        risk_status=created.risk_status,
        risk_reasons=created.risk_reasons,
        client_id=order.client_id,
        desk=order.desk,
        symbol=order.symbol,
        side=order.side,
        order_type=order.order_type,
        time_in_force=terms.time_in_force,
        expire_at=created.expire_at,
        quantity=terms.quantity,
        price=terms.price,
        currency=order.currency,
        filled_quantity=created.filled_quantity,
        avg_fill_price=None,
        client_order_id=client_order_id,
        created_by=principal.email,
        reviewed_by=None,
        approved_by=None,
        approvals_required=created.approvals_required,
        approvals=[],
        replaces=created.replaces,
        version=created.version,
        created_at=created.created_at,
        updated_at=created.updated_at,
    )


# --- cancelling many -------------------------------------------------------------------------

# At most this many orders a call; `more` says to call again.
BULK_CANCEL_MAX = 500


@dataclass(frozen=True, slots=True)
class Cancellation:
    """One order of a bulk cancel: `order` as cancelled, or `refused` with why not."""

    order_id: int
    order: OrderOut | None = None
    refused: DomainError | None = None


@dataclass(frozen=True, slots=True)
class Cancellations:
    each: list[Cancellation]
    more: bool


async def cancel_orders(
    uow: UnitOfWork, principal: Principal, wanted: OrderFilters, *, reason: str | None = None
) -> Cancellations:
    """Cancel every open order of `wanted` the principal can see, each as the single cancel
    would (locked, checked, with its history and audit events), each in a savepoint: one
    refusal never undoes the others. Orders of desks they cannot see are never listed."""
    authorize(principal, Action.CANCEL_ORDER)
    statuses = tuple(s for s in OPEN_STATUSES if wanted.status in (None, s))
    keys = await list_filter_keys(uow, principal, wanted)
    if keys is None:  # a client or symbol the principal cannot see: nothing to cancel
        return Cancellations(each=[], more=False)
    listed = await uow.rows_of(
        repo.filtered_orders(
            principal,
            replace(wanted, status=None, statuses=tuple(sorted(statuses))),
            keys,
            after=None,
            limit=BULK_CANCEL_MAX + 1,
        ),
        OrderOut,
    )
    each = [
        await _cancel_one(uow, principal, order.id, reason) for order in listed[:BULK_CANCEL_MAX]
    ]
    return Cancellations(each, more=len(listed) > BULK_CANCEL_MAX)


async def _cancel_one(
    uow: UnitOfWork, principal: Principal, order_id: int, reason: str | None
) -> Cancellation:
    try:
        async with uow.savepoint():
            cancelled = await transition_order(
                uow, principal, Decision(order_id, CANCEL, reason=reason)
            )
    except DomainError as refused:  # forbidden, or no longer cancellable: only this one
        return Cancellation(order_id, refused=refused)
    except asyncpg.PostgresError as error:
        # The database refused this order's cancel (a trigger, a constraint): this one's 409,
        # its savepoint undone. A transient error (a lost race, a lost connection) or a bug
        # fails the whole command, to be retried or answered as the single cancel would.
        if not refuses_the_change(error):
            raise
        log.warning(
            "cancel refused by the database",
            order_id=order_id,
            error_type=type(error).__name__,
            sqlstate=error.sqlstate,
            error=str(error)[:500],
        )
        return Cancellation(order_id, refused=RefusedByDatabase())
    return Cancellation(order_id, order=cancelled)


class OrderEventOut(BaseModel):
    seq: int
    type: str
    actor: str
    payload: dict[str, Any]
    at: datetime


class OrderEventList(BaseModel):
    items: list[OrderEventOut] = Field(description="Oldest first")


async def order_history(
    uow: UnitOfWork, principal: Principal, order_id: int
) -> list[OrderEventOut]:
    """Every step of the order, oldest first: CREATED, REVIEWED (with the note), …"""
    await get_order(uow, principal, order_id)
    rows = await uow.rows(repo.ORDER_EVENTS, {"id": order_id})
    return [OrderEventOut.model_validate(r, from_attributes=True) for r in rows]


async def read_order_history(
    source: ConnectionSource, credential: Mapping[str, Any], order_id: int, key_usage: KeyUsage
) -> tuple[Principal, list[dict[str, Any]] | None]:
    """GET /orders/{id}/events in one round trip (repo.READ_ORDER_HISTORY): the caller the
    credential names, 401 if none, and the order's events if they can see it. The caller
    decides with shown_history, once it has routed the request (as orders.service.read_order)."""
    read = await one_statement(
        source, repo.READ_ORDER_HISTORY, {**credential, "order_id": order_id}
    )
    principal = principal_found(None if read is None else read.caller, key_usage)
    return principal, None if read is None else read.history


def shown_history(
    principal: Principal, history: list[dict[str, Any]] | None, order_id: int
) -> OrderEventList:
    """The history read for `principal`, if they may read orders and the order was found."""
    return OrderEventList(
        items=[OrderEventOut.model_validate(e) for e in shown_order(principal, history, order_id)]
    )
