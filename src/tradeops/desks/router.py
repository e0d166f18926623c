from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from tradeops.db.http import TransactionalRoute
from tradeops.deps import API_PREFIX, CurrentPrincipal, UoW
from tradeops.desks import service
from tradeops.desks.service import ApprovalPolicyIn, ApprovalPolicyOut, DeskIn, DeskOut
from tradeops.errors import Forbidden, InvalidRequest
from tradeops.problems import problem_responses

router = APIRouter(prefix=f"{API_PREFIX}/desks", tags=["desks"], route_class=TransactionalRoute)


@router.get("", response_model=list[DeskOut])
async def list_desks(principal: CurrentPrincipal, uow: UoW) -> list[DeskOut]:
    """All desks, by code."""
    return await service.list_desks(uow, principal)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DeskOut,
    responses=problem_responses(InvalidRequest, Forbidden, service.DeskExists),
)
async def create_desk(data: DeskIn, principal: CurrentPrincipal, uow: UoW) -> DeskOut:
    """Create a desk (admin)."""
    return await service.create_desk(uow, principal, data)


DeskCode = Annotated[str, Path(max_length=32, examples=["EQ-US"], description="A desk code")]


@router.get(
    "/{code}/approval-policy",
    response_model=ApprovalPolicyOut,
    responses=problem_responses(Forbidden, service.DeskNotFound),
)
async def get_approval_policy(
    code: DeskCode, principal: CurrentPrincipal, uow: UoW
) -> ApprovalPolicyOut:
    """How many approvals, from distinct people, the desk's orders need, by notional band
    (risk and admin). A desk without a policy of its own: one approval for every order."""
    return await service.get_approval_policy(uow, principal, code)


@router.put(
    "/{code}/approval-policy",
    response_model=ApprovalPolicyOut,
    responses=problem_responses(InvalidRequest, Forbidden, service.DeskNotFound),
)
async def set_approval_policy(
    code: DeskCode, policy: ApprovalPolicyIn, principal: CurrentPrincipal, uow: UoW
) -> ApprovalPolicyOut:
    """Replace the desk's approval policy (risk and admin; audited with before and after):
    `bands` by order notional in `currency`, lowest first, the first at 0, each with the
    approvals (1 to 5) an order in it needs. Orders submitted from now on follow it; an order
    keeps the approvals it was submitted with (`approvals_required`)."""
    return await service.set_approval_policy(uow, principal, code, policy)
