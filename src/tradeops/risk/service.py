"""Risk limits, and the pre-trade check that the worker runs for every new order."""

from __future__ import annotations

from dataclasses import asdict
from decimal import Decimal
from typing import Any

import orjson
import structlog

from tradeops.audit import recording as audit
from tradeops.auth.permissions import Action, authorize
from tradeops.auth.principal import Principal
from tradeops.db.uow import UnitOfWork
from tradeops.errors import InvalidRequest
from tradeops.orders.repository import lock_order
from tradeops.orders.states import OrderStatus, RiskStatus
from tradeops.risk import repository as repo
from tradeops.risk.rules import RiskFacts, evaluate, stricter
from tradeops.risk.schemas import RiskLimitIn, RiskLimitOut

log = structlog.get_logger(component="tradeops.risk")

CHECKED = "RISK_CHECKED"
CHECK_ERROR = "RISK_CHECK_ERROR"
AWAITING = frozenset({OrderStatus.PENDING, OrderStatus.REVIEWED})  # nobody decided yet


async def list_limits(
    uow: UnitOfWork, principal: Principal, *, desk: str | None = None, client_id: str | None = None
) -> list[RiskLimitOut]:
    authorize(principal, Action.READ_RISK_LIMITS)
    return await uow.rows(repo.LIST_LIMITS, {"desk": desk, "client_id": client_id})


async def _holder(uow: UnitOfWork, data: RiskLimitIn) -> repo.Holder:
    """The desk's or the client's ids; an unknown one is a field error."""
    if data.client_id is not None:
        found = await uow.row(repo.CLIENT_BY_EXTERNAL_ID, {"external_id": data.client_id})
        if found is None:
            raise InvalidRequest(f"No client {data.client_id}.", field="client_id")
        return found
    found = await uow.row(repo.DESK_BY_CODE, {"code": data.desk})
    if found is None:
        raise InvalidRequest(f"No desk {data.desk}.", field="desk")
    return found


async def set_limit(uow: UnitOfWork, principal: Principal, data: RiskLimitIn) -> RiskLimitOut:
    """Replace one desk's or client's limits; audited with what they were before."""
    authorize(principal, Action.MANAGE_RISK_LIMITS)
    holder = await _holder(uow, data)
    ids = {"desk_id": holder.desk_id, "client_id": holder.client_id}
    before = await uow.row(repo.CURRENT_LIMIT, ids)
    after = await uow.row(
        repo.SET_LIMIT,
        {
            **ids,
            "max_order_notional": data.max_order_notional,
            "max_position": data.max_position,
            "fat_finger_pct": data.fat_finger_pct,
            "updated_by": principal.user_id,
        },
    )
    assert after is not None
    await audit.record(
        uow,
        principal,
        "risk_limit.set",
        "risk_limit",
        after.id,
        before=asdict(before) if before else None,
        after=asdict(after),
    )
    shown = await uow.row(repo.LIMIT_BY_ID, {"id": after.id})
    assert shown is not None  # the row this transaction just wrote
    return shown


def facts_of(row: repo.RiskFactsRow, default_fat_finger_pct: Decimal) -> RiskFacts:
    bands = [b for b in (row.desk_fat_finger_pct, row.client_fat_finger_pct) if b is not None]
    return RiskFacts(
        symbol=row.symbol,
        side=row.side,
        quantity=row.quantity,
        price=row.price,
        currency=row.currency,
        restricted=row.restricted,
        last_price=row.last_price,
        position=row.position,
        working=row.working,
        max_order_notional=stricter(row.desk_max_order_notional, row.client_max_order_notional),
        max_position=stricter(row.desk_max_position, row.client_max_position),
        fat_finger_pct=min(bands, default=default_fat_finger_pct),
    )


async def _record(
    uow: UnitOfWork,
    order_id: int,
    risk_status: RiskStatus,
    reasons: list[dict[str, Any]],
    event_type: str,
) -> bool:
    changed = await uow.row(
        repo.RECORD_RESULT,
        {
            "id": order_id,
            "risk_status": risk_status,
            "reasons": orjson.dumps(reasons).decode(),
            "event_type": event_type,
            "actor": "system:risk-check",
            "payload": orjson.dumps({"risk_status": risk_status, "reasons": reasons}).decode(),
            "action": "order.risk_checked" if event_type == CHECKED else "order.risk_check_error",
        },
    )
    return changed is not None


async def check_order(
    uow: UnitOfWork, order_id: int, *, default_fat_finger_pct: Decimal
) -> str | None:
    """Run the rules for one order and record PASSED or FAILED with the reasons.

    Idempotent: an order already checked (or gone) is left as it is; the result is None.
    Orders already rejected or cancelled are not checked: nobody can approve them any more.
    """
    row = await lock_order(uow, repo.RISK_FACTS, order_id)
    if row is None or row.risk_status is not RiskStatus.PENDING or row.status not in AWAITING:
        log.info("risk_check_skipped", order_id=order_id, reason="not awaiting a check")
        return None
    reasons = evaluate(facts_of(row, default_fat_finger_pct))
    risk_status = RiskStatus.FAILED if reasons else RiskStatus.PASSED
    await _record(uow, order_id, risk_status, reasons, CHECKED)
    log.info("risk_checked", order_id=order_id, risk_status=risk_status, reasons=len(reasons))
    return risk_status


async def record_check_error(uow: UnitOfWork, order_id: int, error: str) -> bool:
    """The check could not run at all: fail closed, visibly, so nobody approves unchecked."""
    reason = {
        "code": "RISK_CHECK_ERROR",
        "message": f"The risk check could not run ({error}); reject and resubmit the order.",
    }
    return await _record(uow, order_id, RiskStatus.FAILED, [reason], CHECK_ERROR)
